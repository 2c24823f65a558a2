// m2rnn_ops.hpp — the M²RNN op cases (registered as m2rnn_fwd / m2rnn_bwd in ops_m2rnn.cpp), exposed
// so that the family's GPU test can run them on its own shapes without linking every family.
#pragma once
#include "kernels/registry/op_registry.hpp"

namespace megacpp::m2rnn {

// Shape keys: B, S, heads, key_dim, value_dim. Flags: "clip" (off|kernel|total, bwd only; bench default
// kernel = the authors' training setting, check default off), "variant" (0 optimised, default; 1 baseline).
// Tolerances (stable_max_rel vs float64 on the same bf16-rounded q/k/v and fp32 f/W/D), documented in
// docs/perf/m2rnn.md: tolerance_fwd(S) for o and hT, tolerance_bwd(S) for every gradient.
double tolerance_fwd(int64_t S);
double tolerance_bwd(int64_t S);
CheckResult check_fwd(const OpShape& shape, uint64_t seed, const OpOptions& opt);
CheckResult check_bwd(const OpShape& shape, uint64_t seed, const OpOptions& opt);
BenchResult bench_fwd(const OpShape& shape, const OpOptions& opt);
BenchResult bench_bwd(const OpShape& shape, const OpOptions& opt);

}  // namespace megacpp::m2rnn
