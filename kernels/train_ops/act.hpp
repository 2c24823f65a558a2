// act.hpp — MLP activations, elementwise over a [rows, cols] view with row strides (so g and u can be
// the two halves of one fc1 output row):
//   swiglu: a = silu(g)·u              dg = da·u·σ(g)·(1 + g·(1−σ(g))),  du = da·silu(g)
//   relu2 : a = max(g,0)²              dg = 2·max(g,0)·da                 (u, du unused: pass nullptr)
// g, u, dg, du use row stride ld_in; a, da use ld_out. Limits: cols, ld_in, ld_out % 8 == 0, pointers
// 16-byte aligned (16-byte vector loads). fp32 math, bf16 in/out.
#pragma once
#include "kernels/train_ops/train_ops_common.hpp"

namespace megacpp::train_ops {

enum class Act { swiglu, relu2 };
const char* act_name(Act a);

void act_fwd(Act act, const bf16* g, const bf16* u, bf16* a, int64_t rows, int64_t cols, int64_t ld_in,
             int64_t ld_out, cudaStream_t stream);
void act_bwd(Act act, const bf16* g, const bf16* u, const bf16* da, bf16* dg, bf16* du, int64_t rows, int64_t cols,
             int64_t ld_in, int64_t ld_out, cudaStream_t stream);
std::vector<KernelInfo> act_kernel_info(Act act);

}  // namespace megacpp::train_ops
