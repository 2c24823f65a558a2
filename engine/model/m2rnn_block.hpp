// m2rnn_block.hpp — the R letter on the CPU reference backend: the M²RNN mixer of
// ../shared/docs/m2rnn-spec.md around the float64 block reference of kernels/m2rnn
// (projection [q | k | v | forget logit | output gate], causal depthwise conv + SiLU on q/k/v,
// Z = tanh(H·W + k vᵀ), H ← f·H + (1−f)·Z, readout Hᵀq + D⊙v, SiLU gate, RMSNorm over all heads,
// output projection). Parameters keep the reference's layouts (w_in [hidden, P], w_out [N·V, hidden]).
// Saved for backward: the block input; the reference recomputes the rest.
#pragma once
#include <vector>

#include "engine/model/block.hpp"
#include "kernels/m2rnn/m2rnn_ref.hpp"

namespace megacpp {

template <typename T>
class M2rnnBlock final : public Block<T> {
 public:
  // Tensor parallelism: TP rank r holds heads [r·N/tp, …): their v, φ, g columns of w_in and v rows of
  // conv_w, the per-head A_log, dt_bias, W, D, gamma entries and w_out rows. The shared q/k columns of
  // w_in and q/k rows of conv_w are held by every TP rank (computed identically; their gradients are
  // TP-partial: ParamSpec::tp_replicated). The RMSNorm over all N·V channels all-reduces each row's sum
  // of squares (forward) and Σγ·(∂y/∂r)·m (backward) over TP; y and dx are all-reduced. This path is
  // written here around the reference's scan (scan_forward/scan_backward); tp = 1 calls the reference block.
  M2rnnBlock(const Recipe& r, ParamStore<T>& ps, const std::string& prefix, int64_t max_tokens,
             const ModelParallel* mp = nullptr);
  const char* name() const override { return "m2rnn"; }
  void bind(ParamStore<T>& ps) override { ps_ = &ps; }
  void forward(const T* x, T* y, int64_t B, int64_t S) override;
  void backward(const T* dy, T* dx, int64_t B, int64_t S) override;
  double flops_per_token(int64_t S) const override;
  void init_params(uint64_t seed, int64_t n_layers) override;

 private:
  m2rnn::BlockParams gather() const;
  void tp_forward(int B, int S, std::vector<double>& y);
  void tp_backward(int B, int S, const std::vector<double>& dy, std::vector<double>& dx);
  ParamStore<T>* ps_ = nullptr;
  const ModelParallel* tpm_ = nullptr;  // set when TP > 1
  int heads_full_ = 0;
  // TP path: saved forward state (zero initial state, no pre-norm: the engine's)
  std::vector<double> u_, aext_, pre_, phi_s_, m_, rho_;
  m2rnn::ScanInputs si_;
  m2rnn::ScanOutputs so_;
  m2rnn::BlockConfig cfg_;
  std::vector<int> idx_;  // w_in, conv_w, A_log, dt_bias, W, D, gamma, w_out
  std::vector<double> x_;
};

}  // namespace megacpp
