// Autograd for the forward ops, registered at the Autograd key in C++. A
// Python autograd kernel (torch.library.register_autograd) sat in front of
// every call, gradient or not: 8-10 us per forward and about 40 us more per
// backward than ATen's, a sixth of ResNet's stem backward for one image. The
// backward ops keep their autograd in Python (_autograd.py): only a double
// backward reaches it.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace poolops {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using MaxSig = std::tuple<Tensor, Tensor>(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool);
using MaxValuesSig = Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool);
using MaxBackwardSig = Tensor(const Tensor&, const Tensor&, c10::SymIntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef,
                              IntArrayRef, bool);
using AvgSig = Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>,
                      IntArrayRef);
using AvgBackwardSig = Tensor(const Tensor&, c10::SymIntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool,
                              std::optional<int64_t>, IntArrayRef);
using SizeBackwardSig = Tensor(const Tensor&, c10::SymIntArrayRef);
using ArgmaxBackwardSig = Tensor(const Tensor&, const Tensor&, c10::SymIntArrayRef);
using ConvSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef, IntArrayRef,
                       IntArrayRef, int64_t);
using ConvBackwardSig = Tensor(const Tensor&, const Tensor&, c10::SymIntArrayRef, IntArrayRef, IntArrayRef,
                               IntArrayRef, int64_t);

// Whether a forward must record a graph for these inputs.
bool records(std::initializer_list<const Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : inputs) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// The op's kernel below the autograd keys, recording nothing.
template <typename Sig, typename... Args>
auto call_below(const c10::TypedOperatorHandle<Sig>& handle, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below;
  return handle.call(std::forward<Args>(args)...);
}

// A backward op's result: with create_graph, through the op's own autograd
// (for a double backward); otherwise below it, recording nothing, as a
// native backward does.
template <typename Sig, typename... Args>
Tensor backward_op(const c10::TypedOperatorHandle<Sig>& handle, Args&&... args) {
  if (at::GradMode::is_enabled()) return handle.call(std::forward<Args>(args)...);
  at::AutoDispatchBelowAutograd below;
  return handle.call(std::forward<Args>(args)...);
}

std::vector<int64_t> ints(AutogradContext* ctx, const char* key) { return ctx->saved_data[key].toIntVector(); }

// The input's size and the window parameters, kept for the backward.
void save_pool_params(AutogradContext* ctx, const Tensor& x, IntArrayRef k, IntArrayRef s, IntArrayRef p,
                     IntArrayRef d, bool ceil_mode) {
  ctx->saved_data["input_size"] = x.sym_sizes();
  ctx->saved_data["k"] = k;
  ctx->saved_data["s"] = s;
  ctx->saved_data["p"] = p;
  ctx->saved_data["d"] = d;
  ctx->saved_data["ceil"] = ceil_mode;
}

Tensor max_backward(AutogradContext* ctx, const Tensor& grad, const Tensor& argmax) {
  static const auto handle = op<MaxBackwardSig>("poolops::_max_pool2d_backward");
  return backward_op(handle, grad, argmax, ctx->saved_data["input_size"].toSymIntVector(), ints(ctx, "k"),
                     ints(ctx, "s"), ints(ctx, "p"), ints(ctx, "d"), ctx->saved_data["ceil"].toBool());
}

// max_pool2d_with_indices and max_pool2d_with_taps: the gradient goes to each
// window's argmax; the argmax output takes none (and no zeros are made for it).
struct MaxPoolArgmax : public torch::autograd::Function<MaxPoolArgmax> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, IntArrayRef k, IntArrayRef s, IntArrayRef p,
                               IntArrayRef d, bool ceil_mode, const c10::TypedOperatorHandle<MaxSig>& handle) {
    auto [y, argmax] = call_below(handle, x, k, s, p, d, ceil_mode);
    ctx->set_materialize_grads(false);
    ctx->mark_non_differentiable({argmax});
    ctx->save_for_backward({argmax});
    save_pool_params(ctx, x, k, s, p, d, ceil_mode);
    return {y, argmax};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor grad = grads[0].defined() ? max_backward(ctx, grads[0], ctx->get_saved_variables()[0]) : Tensor();
    return {grad, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

template <const char* kName>
std::tuple<Tensor, Tensor> max_pool2d_argmax(const Tensor& x, IntArrayRef k, IntArrayRef s, IntArrayRef p,
                                             IntArrayRef d, bool ceil_mode) {
  static const auto handle = op<MaxSig>(kName);
  if (!records({&x})) {
    return call_below(handle, x, k, s, p, d, ceil_mode);
  }
  const variable_list out = MaxPoolArgmax::apply(x, k, s, p, d, ceil_mode, handle);
  return {out[0], out[1]};
}

constexpr char kWithIndices[] = "poolops::max_pool2d_with_indices";
constexpr char kWithTaps[] = "poolops::max_pool2d_with_taps";

// max_pool2d without an argmax (inference): a backward recomputes the indices.
struct MaxPoolValues : public torch::autograd::Function<MaxPoolValues> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, IntArrayRef k, IntArrayRef s, IntArrayRef p,
                        IntArrayRef d, bool ceil_mode) {
    static const auto handle = op<MaxValuesSig>("poolops::max_pool2d");
    ctx->save_for_backward({x});
    save_pool_params(ctx, x, k, s, p, d, ceil_mode);
    return call_below(handle, x, k, s, p, d, ceil_mode);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto indices_of = op<MaxSig>(kWithIndices);
    Tensor indices;
    {
      at::AutoDispatchBelowAutograd below;
      indices = std::get<1>(indices_of.call(ctx->get_saved_variables()[0], ints(ctx, "k"), ints(ctx, "s"),
                                            ints(ctx, "p"), ints(ctx, "d"), ctx->saved_data["ceil"].toBool()));
    }
    return {max_backward(ctx, grads[0], indices), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor max_pool2d(const Tensor& x, IntArrayRef k, IntArrayRef s, IntArrayRef p, IntArrayRef d, bool ceil_mode) {
  if (!records({&x})) {
    static const auto handle = op<MaxValuesSig>("poolops::max_pool2d");
    return call_below(handle, x, k, s, p, d, ceil_mode);
  }
  return MaxPoolValues::apply(x, k, s, p, d, ceil_mode);
}

struct AvgPool : public torch::autograd::Function<AvgPool> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, IntArrayRef k, IntArrayRef s, IntArrayRef p,
                        bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor, IntArrayRef d) {
    static const auto handle = op<AvgSig>("poolops::avg_pool2d");
    save_pool_params(ctx, x, k, s, p, d, ceil_mode);
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor"] = divisor;
    return call_below(handle, x, k, s, p, ceil_mode, count_include_pad, divisor, d);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto handle = op<AvgBackwardSig>("poolops::_avg_pool2d_backward");
    const c10::IValue& divisor = ctx->saved_data["divisor"];
    const Tensor grad = backward_op(handle, grads[0], ctx->saved_data["input_size"].toSymIntVector(), ints(ctx, "k"),
                                    ints(ctx, "s"), ints(ctx, "p"), ctx->saved_data["ceil"].toBool(),
                                    ctx->saved_data["count_include_pad"].toBool(),
                                    divisor.isNone() ? std::nullopt : std::optional<int64_t>(divisor.toInt()),
                                    ints(ctx, "d"));
    return {grad, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor avg_pool2d(const Tensor& x, IntArrayRef k, IntArrayRef s, IntArrayRef p, bool ceil_mode,
                  bool count_include_pad, std::optional<int64_t> divisor, IntArrayRef d) {
  if (!records({&x})) {
    static const auto handle = op<AvgSig>("poolops::avg_pool2d");
    return call_below(handle, x, k, s, p, ceil_mode, count_include_pad, divisor, d);
  }
  return AvgPool::apply(x, k, s, p, ceil_mode, count_include_pad, divisor, d);
}

// adaptive_avg_pool2d and global_avg_pool2d: the backward needs only the input's size.
template <const char* kName, const char* kBackward, typename... Params>
struct SizePool : public torch::autograd::Function<SizePool<kName, kBackward, Params...>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, Params... params) {
    static const auto handle = op<Tensor(const Tensor&, Params...)>(kName);
    ctx->saved_data["input_size"] = x.sym_sizes();
    return call_below(handle, x, params...);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto handle = op<SizeBackwardSig>(kBackward);
    variable_list out(1 + sizeof...(Params));
    out[0] = backward_op(handle, grads[0], ctx->saved_data["input_size"].toSymIntVector());
    return out;
  }
  static Tensor run(const Tensor& x, Params... params) {
    if (!records({&x})) {
      static const auto handle = op<Tensor(const Tensor&, Params...)>(kName);
      return call_below(handle, x, params...);
    }
    return SizePool::apply(x, params...);
  }
};

// adaptive_max_pool2d and global_max_pool2d: the gradient goes to the saved argmax.
template <const char* kName, const char* kBackward, typename... Params>
struct ArgmaxPool : public torch::autograd::Function<ArgmaxPool<kName, kBackward, Params...>> {
  using Sig = std::tuple<Tensor, Tensor>(const Tensor&, Params...);
  static variable_list forward(AutogradContext* ctx, const Tensor& x, Params... params) {
    static const auto handle = op<Sig>(kName);
    auto [y, argmax] = call_below(handle, x, params...);
    ctx->set_materialize_grads(false);
    ctx->mark_non_differentiable({argmax});
    ctx->save_for_backward({argmax});
    ctx->saved_data["input_size"] = x.sym_sizes();
    return {y, argmax};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto handle = op<ArgmaxBackwardSig>(kBackward);
    variable_list out(1 + sizeof...(Params));
    if (grads[0].defined()) {
      out[0] = backward_op(handle, grads[0], ctx->get_saved_variables()[0],
                           ctx->saved_data["input_size"].toSymIntVector());
    }
    return out;
  }
  static std::tuple<Tensor, Tensor> run(const Tensor& x, Params... params) {
    if (!records({&x})) {
      static const auto handle = op<Sig>(kName);
      return call_below(handle, x, params...);
    }
    const variable_list out = ArgmaxPool::apply(x, params...);
    return {out[0], out[1]};
  }
};

constexpr char kAdaptiveAvg[] = "poolops::adaptive_avg_pool2d";
constexpr char kAdaptiveAvgBackward[] = "poolops::_adaptive_avg_pool2d_backward";
constexpr char kGlobalAvg[] = "poolops::global_avg_pool2d";
constexpr char kGlobalAvgBackward[] = "poolops::_global_avg_pool2d_backward";
constexpr char kAdaptiveMax[] = "poolops::adaptive_max_pool2d";
constexpr char kAdaptiveMaxBackward[] = "poolops::_adaptive_max_pool2d_backward";
constexpr char kGlobalMax[] = "poolops::global_max_pool2d";
constexpr char kGlobalMaxBackward[] = "poolops::_global_max_pool2d_backward";

// conv2d: grad_input and grad_weight from the two backward ops, grad_bias a sum.
struct Conv : public torch::autograd::Function<Conv> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                        IntArrayRef s, IntArrayRef p, IntArrayRef d, int64_t groups) {
    static const auto handle = op<ConvSig>("poolops::conv2d");
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["s"] = s;
    ctx->saved_data["p"] = p;
    ctx->saved_data["d"] = d;
    ctx->saved_data["groups"] = groups;
    return call_below(handle, x, weight, bias, s, p, d, groups);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto input_grad = op<ConvBackwardSig>("poolops::_conv2d_backward_input");
    static const auto weight_grad = op<ConvBackwardSig>("poolops::_conv2d_backward_weight");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &grad = grads[0];
    const auto s = ints(ctx, "s"), p = ints(ctx, "p"), d = ints(ctx, "d");
    const int64_t groups = ctx->saved_data["groups"].toInt();
    variable_list out(7);
    if (ctx->needs_input_grad(0)) out[0] = backward_op(input_grad, grad, weight, x.sym_sizes(), s, p, d, groups);
    if (ctx->needs_input_grad(1)) out[1] = backward_op(weight_grad, grad, x, weight.sym_sizes(), s, p, d, groups);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) out[2] = grad.sum({0, 2, 3});
    return out;
  }
};

Tensor conv2d(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, IntArrayRef s, IntArrayRef p,
              IntArrayRef d, int64_t groups) {
  const Tensor none;
  if (!records({&x, &weight, bias.has_value() ? &*bias : &none})) {
    static const auto handle = op<ConvSig>("poolops::conv2d");
    return call_below(handle, x, weight, bias, s, p, d, groups);
  }
  return Conv::apply(x, weight, bias, s, p, d, groups);
}

}  // namespace
}  // namespace poolops

TORCH_LIBRARY_IMPL(poolops, Autograd, m) {
  using namespace poolops;
  m.impl("max_pool2d_with_indices", &max_pool2d_argmax<kWithIndices>);
  m.impl("max_pool2d_with_taps", &max_pool2d_argmax<kWithTaps>);
  m.impl("max_pool2d", &max_pool2d);
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("adaptive_avg_pool2d", &SizePool<kAdaptiveAvg, kAdaptiveAvgBackward, IntArrayRef>::run);
  m.impl("global_avg_pool2d", &SizePool<kGlobalAvg, kGlobalAvgBackward>::run);
  m.impl("adaptive_max_pool2d", &ArgmaxPool<kAdaptiveMax, kAdaptiveMaxBackward, IntArrayRef>::run);
  m.impl("global_max_pool2d", &ArgmaxPool<kGlobalMax, kGlobalMaxBackward>::run);
  m.impl("conv2d", &conv2d);
}
