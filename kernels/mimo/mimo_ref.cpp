// mimo_ref.cpp — float64 CPU reference of the Mamba-3 MIMO scan core: step form (§2), chunked form (§3) and
// both backward passes. See mimo_ref.hpp for the maths and the layouts.
//
// Structure: every (b, h) pair is independent except for the group reduction of dq/dk and the parameter
// gradients. For each (b, h) we gather the per-head operands (biased q/k, rotated q̄/k̄, V' = x·Ψ, decay and
// trapezoid scalars) into a Head, run a scan core that maps V'… to y (S,R,P), and apply the output epilogue.
// The backward runs the epilogue backward (dout → g = ∂L/∂y), a scan-core backward (g → ∂/∂q̄, ∂/∂k̄, ∂/∂V',
// ∂/∂ADT, ∂/∂Δ, ∂/∂trap, ∂/∂D) and the shared "un-prep" (rotation transpose, angle grads, bias/group/Ψ sums).
// The two scan cores (step and chunked) are written independently of each other; the shared parts are checked
// by the finite-difference tests.
#include "kernels/mimo/mimo_ref.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <numbers>
#include <stdexcept>
#include <string>
#include <thread>

#include "kernels/common/host_rng.hpp"
#include "kernels/mimo/mimo_prep_ref.hpp"

namespace megacpp::mimo {

// ------------------------------------------------------------------------------------------------
// MimoShape
// ------------------------------------------------------------------------------------------------
int64_t MimoShape::n_ang() const {
  const int64_t rotated = static_cast<int64_t>(std::floor(static_cast<double>(N) * rope_fraction));
  return (rotated / 2 * 2) / 2;  // floor_even(N·rope_fraction) / 2
}

int64_t MimoShape::nchunks() const { return L > 0 ? S / L : 0; }

void MimoShape::validate() const {
  auto positive = [](const char* name, int64_t v) {
    if (v <= 0)
      throw std::invalid_argument(std::string("mimo: ") + name + "=" + std::to_string(v) + " must be > 0");
  };
  positive("B", B);
  positive("S", S);
  positive("H", H);
  positive("G", G);
  positive("N", N);
  positive("P", P);
  positive("R", R);
  positive("L", L);
  auto one_of = [](const char* name, int64_t v, std::initializer_list<int64_t> ok, const char* list) {
    if (std::find(ok.begin(), ok.end(), v) == ok.end())
      throw std::invalid_argument(std::string("mimo: ") + name + "=" + std::to_string(v) +
                                  " not supported (supported: " + list + ")");
  };
  one_of("N", N, {16, 32, 64, 128, 256}, "16,32,64,128,256");
  one_of("P", P, {32, 64, 128}, "32,64,128");
  one_of("R", R, {1, 2, 4, 8}, "1,2,4,8");
  one_of("L", L, {8, 16, 32, 64}, "8,16,32,64");
  if (H % G != 0)
    throw std::invalid_argument("mimo: H=" + std::to_string(H) + " must be a multiple of G=" + std::to_string(G));
  if (S % L != 0)
    throw std::invalid_argument("mimo: seq_len S=" + std::to_string(S) + " must be a multiple of chunk_size L=" +
                                std::to_string(L));
  if (!(rope_fraction == 0.5 || rope_fraction == 1.0))
    throw std::invalid_argument("mimo: rope_fraction=" + std::to_string(rope_fraction) +
                                " not supported (supported: 0.5, 1.0)");
  if (outproj_norm && !(norm_eps > 0))
    throw std::invalid_argument("mimo: norm_eps=" + std::to_string(norm_eps) + " must be > 0");
}

namespace {

using prep::sigmoid;

inline double silu(double u) { return u * sigmoid(u); }
inline double silu_grad(double u) {
  const double s = sigmoid(u);
  return s * (1.0 + u * (1.0 - s));
}

void check_size(const char* what, const std::vector<double>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) != n)
    throw std::invalid_argument(std::string("mimo: input ") + what + " has " + std::to_string(v.size()) +
                                " elements, expected " + std::to_string(n));
}

void check_inputs(const MimoShape& s, const MimoInputs& in) {
  s.validate();
  check_size("q", in.q, s.qk_numel());
  check_size("k", in.k, s.qk_numel());
  check_size("v", in.v, s.vz_numel());
  check_size("z", in.z, s.vz_numel());
  check_size("adt", in.adt, s.bhs_numel());
  check_size("dt", in.dt, s.bhs_numel());
  check_size("trap", in.trap, s.bhs_numel());
  check_size("q_bias", in.q_bias, s.hrn_numel());
  check_size("k_bias", in.k_bias, s.hrn_numel());
  check_size("psi", in.psi, s.hrp_numel());
  check_size("zeta", in.zeta, s.hrp_numel());
  check_size("phi", in.phi, s.hrp_numel());
  check_size("angles", in.angles, s.angles_numel());
  check_size("d", in.d, s.H);
  if (s.outproj_norm) check_size("norm_weight", in.norm_weight, s.H * s.P);
}

// Per-(b,h) operands. Row-major (S,R,N) / (S,R,P) / (S).
struct Head {
  int64_t S = 0, R = 0, N = 0, P = 0, NA = 0;
  std::vector<double> qb, kb;  // biased, unrotated (S,R,N)
  std::vector<double> qr, kr;  // rotated (S,R,N)
  std::vector<double> cs, sn;  // cos/sin of θ (S,NA)
  std::vector<double> x;       // raw v (S,P)
  std::vector<double> vp;      // V' = x·Ψ (S,R,P)
  std::vector<double> adt, dt, lam;  // (S); lam = σ(trap)
  double D = 0;
};

struct HeadGrads {
  std::vector<double> dqr, dkr;  // w.r.t. rotated q̄, k̄ (S,R,N)
  std::vector<double> dqu, dku;  // w.r.t. unrotated biased q, k, added directly (S,R,N) (the diagonal term)
  std::vector<double> dvp;       // (S,R,P)
  std::vector<double> dadt, ddt, dtrap;  // (S)
  double dD = 0;
  void reset(int64_t S, int64_t R, int64_t N, int64_t P) {
    dqr.assign(S * R * N, 0.0);
    dkr.assign(S * R * N, 0.0);
    dqu.assign(S * R * N, 0.0);
    dku.assign(S * R * N, 0.0);
    dvp.assign(S * R * P, 0.0);
    dadt.assign(S, 0.0);
    ddt.assign(S, 0.0);
    dtrap.assign(S, 0.0);
    dD = 0;
  }
};

// One (b,h)'s contributions to the gradients that several (b,h) share (group reduction, parameters). They are
// summed into MimoGrads in a fixed (b,h) order after the parallel part, so results do not depend on threads.
struct HeadShared {
  std::vector<double> dq, dk;                 // (S,R,N) w.r.t. the biased unrotated q, k of this head
  std::vector<double> dq_bias, dk_bias;       // (R,N)
  std::vector<double> dpsi, dphi, dzeta;      // (R,P)
  std::vector<double> dnorm_weight;           // (P) when outproj_norm
  double dD = 0;
  void reset(const MimoShape& s) {
    dq.assign(s.S * s.R * s.N, 0.0);
    dk.assign(s.S * s.R * s.N, 0.0);
    dq_bias.assign(s.R * s.N, 0.0);
    dk_bias.assign(s.R * s.N, 0.0);
    dpsi.assign(s.R * s.P, 0.0);
    dphi.assign(s.R * s.P, 0.0);
    dzeta.assign(s.R * s.P, 0.0);
    dnorm_weight.assign(s.outproj_norm ? s.P : 0, 0.0);
    dD = 0;
  }
};

// Rotate u in place by the angles (c, s) on the half-split pairs (j, j+N/2), j < NA.
inline void rotate(double* u, const double* c, const double* s, int64_t NA, int64_t half) {
  for (int64_t j = 0; j < NA; ++j) {
    const double u1 = u[j], u2 = u[j + half];
    u[j] = c[j] * u1 - s[j] * u2;
    u[j + half] = s[j] * u1 + c[j] * u2;
  }
}

void load_head(const MimoShape& s, const MimoInputs& in, int64_t b, int64_t h, Head& hd) {
  const int64_t S = s.S, R = s.R, N = s.N, P = s.P, G = s.G, H = s.H, NA = s.n_ang();
  const int64_t g = h / (H / G);
  hd.S = S;
  hd.R = R;
  hd.N = N;
  hd.P = P;
  hd.NA = NA;
  hd.qb.resize(S * R * N);
  hd.kb.resize(S * R * N);
  hd.cs.resize(S * NA);
  hd.sn.resize(S * NA);
  hd.x.resize(S * P);
  hd.vp.resize(S * R * P);
  hd.adt.resize(S);
  hd.dt.resize(S);
  hd.lam.resize(S);
  hd.D = in.d[h];
  for (int64_t t = 0; t < S; ++t) {
    const double* th = &in.angles[((b * S + t) * H + h) * NA];
    for (int64_t j = 0; j < NA; ++j) {
      hd.cs[t * NA + j] = std::cos(th[j]);
      hd.sn[t * NA + j] = std::sin(th[j]);
    }
    for (int64_t r = 0; r < R; ++r) {
      const double* qs = &in.q[(((b * S + t) * R + r) * G + g) * N];
      const double* ks = &in.k[(((b * S + t) * R + r) * G + g) * N];
      const double* qbias = &in.q_bias[(h * R + r) * N];
      const double* kbias = &in.k_bias[(h * R + r) * N];
      double* qd = &hd.qb[(t * R + r) * N];
      double* kd = &hd.kb[(t * R + r) * N];
      for (int64_t n = 0; n < N; ++n) {
        qd[n] = qs[n] + qbias[n];
        kd[n] = ks[n] + kbias[n];
      }
    }
    const double* xs = &in.v[((b * S + t) * H + h) * P];
    std::copy(xs, xs + P, &hd.x[t * P]);
    for (int64_t r = 0; r < R; ++r) {
      const double* psi = &in.psi[(h * R + r) * P];
      double* vd = &hd.vp[(t * R + r) * P];
      for (int64_t p = 0; p < P; ++p) vd[p] = xs[p] * psi[p];
    }
    const int64_t o = (b * H + h) * S + t;
    hd.adt[t] = in.adt[o];
    hd.dt[t] = in.dt[o];
    hd.lam[t] = sigmoid(in.trap[o]);
  }
  hd.qr = hd.qb;
  hd.kr = hd.kb;
  for (int64_t t = 0; t < S; ++t)
    for (int64_t r = 0; r < R; ++r) {
      rotate(&hd.qr[(t * R + r) * N], &hd.cs[t * NA], &hd.sn[t * NA], NA, N / 2);
      rotate(&hd.kr[(t * R + r) * N], &hd.cs[t * NA], &hd.sn[t * NA], NA, N / 2);
    }
}

// ---- output epilogue ----------------------------------------------------------------------------
// y (S,R,P) of head (b,h) → out[b,:,h,:]
void epilogue_fwd(const MimoShape& s, const MimoInputs& in, int64_t b, int64_t h, const std::vector<double>& y,
                  std::vector<double>& out) {
  const int64_t S = s.S, R = s.R, P = s.P, H = s.H;
  std::vector<double> rstd(R, 1.0);
  for (int64_t t = 0; t < S; ++t) {
    const double* z = &in.z[((b * S + t) * H + h) * P];
    double* o = &out[((b * S + t) * H + h) * P];
    std::fill(o, o + P, 0.0);
    for (int64_t r = 0; r < R; ++r) {
      const double* yr = &y[(t * R + r) * P];
      const double* zeta = &in.zeta[(h * R + r) * P];
      const double* phi = &in.phi[(h * R + r) * P];
      if (s.outproj_norm) {
        double ss = 0;
        for (int64_t p = 0; p < P; ++p) ss += yr[p] * yr[p];
        const double rs = 1.0 / std::sqrt(ss / static_cast<double>(P) + s.norm_eps);
        const double* w = &in.norm_weight[h * P];
        for (int64_t p = 0; p < P; ++p) o[p] += phi[p] * silu(z[p] * zeta[p]) * w[p] * yr[p] * rs;
      } else {
        for (int64_t p = 0; p < P; ++p) o[p] += phi[p] * silu(z[p] * zeta[p]) * yr[p];
      }
    }
  }
}

// dout → g = ∂L/∂y (S,R,P); writes dz of head (b,h) (disjoint per head) and accumulates dphi, dzeta,
// dnorm_weight into the head's shared part.
void epilogue_bwd(const MimoShape& s, const MimoInputs& in, int64_t b, int64_t h, const std::vector<double>& y,
                  const std::vector<double>& dout, std::vector<double>& gy, MimoGrads& gr, HeadShared& hs) {
  const int64_t S = s.S, R = s.R, P = s.P, H = s.H;
  gy.assign(S * R * P, 0.0);
  std::vector<double> yy(P), dn(P);
  for (int64_t t = 0; t < S; ++t) {
    const int64_t row = ((b * S + t) * H + h) * P;
    const double* z = &in.z[row];
    const double* dO = &dout[row];
    double* dz = &gr.dz[row];
    for (int64_t r = 0; r < R; ++r) {
      const double* yr = &y[(t * R + r) * P];
      double* g = &gy[(t * R + r) * P];
      const double* zeta = &in.zeta[(h * R + r) * P];
      const double* phi = &in.phi[(h * R + r) * P];
      double* dzeta = &hs.dzeta[r * P];
      double* dphi = &hs.dphi[r * P];
      for (int64_t p = 0; p < P; ++p) dn[p] = dO[p] * phi[p] * silu(z[p] * zeta[p]);
      if (s.outproj_norm) {
        const double* w = &in.norm_weight[h * P];
        double* dw = hs.dnorm_weight.data();
        double ss = 0;
        for (int64_t p = 0; p < P; ++p) ss += yr[p] * yr[p];
        const double rs = 1.0 / std::sqrt(ss / static_cast<double>(P) + s.norm_eps);
        double rho = 0;
        for (int64_t p = 0; p < P; ++p) {
          const double xh = yr[p] * rs;
          dw[p] += dn[p] * xh;
          rho += dn[p] * w[p] * xh;
          yy[p] = xh * w[p];
        }
        rho /= static_cast<double>(P);
        for (int64_t p = 0; p < P; ++p) g[p] = rs * (dn[p] * w[p] - yr[p] * rs * rho);
      } else {
        for (int64_t p = 0; p < P; ++p) {
          yy[p] = yr[p];
          g[p] = dn[p];
        }
      }
      for (int64_t p = 0; p < P; ++p) {
        const double u = z[p] * zeta[p];
        dphi[p] += dO[p] * silu(u) * yy[p];
        const double du = dO[p] * phi[p] * yy[p] * silu_grad(u);
        dz[p] += du * zeta[p];
        dzeta[p] += du * z[p];
      }
    }
  }
}

// ---- shared un-prep: head grads → MimoGrads (per-head disjoint parts) and HeadShared -------------
void unprep(const MimoShape& s, const MimoInputs& in, int64_t b, int64_t h, const Head& hd, const HeadGrads& hg,
            MimoGrads& gr, HeadShared& hs) {
  const int64_t S = s.S, R = s.R, N = s.N, P = s.P, H = s.H, NA = hd.NA, half = N / 2;
  std::vector<double> du(N);
  for (int64_t t = 0; t < S; ++t) {
    const double* c = &hd.cs[t * NA];
    const double* sn = &hd.sn[t * NA];
    double* dth = &gr.dangles[((b * S + t) * H + h) * NA];
    for (int64_t which = 0; which < 2; ++which) {
      const std::vector<double>& rot = which == 0 ? hd.qr : hd.kr;
      const std::vector<double>& drot = which == 0 ? hg.dqr : hg.dkr;
      const std::vector<double>& dunrot = which == 0 ? hg.dqu : hg.dku;
      std::vector<double>& dst = which == 0 ? hs.dq : hs.dk;
      std::vector<double>& dbias = which == 0 ? hs.dq_bias : hs.dk_bias;
      for (int64_t r = 0; r < R; ++r) {
        const double* e = &drot[(t * R + r) * N];
        const double* u = &rot[(t * R + r) * N];
        const double* du0 = &dunrot[(t * R + r) * N];
        for (int64_t n = 0; n < N; ++n) du[n] = e[n] + du0[n];
        for (int64_t j = 0; j < NA; ++j) {
          const double e1 = e[j], e2 = e[j + half];
          du[j] = du0[j] + c[j] * e1 + sn[j] * e2;
          du[j + half] = du0[j + half] - sn[j] * e1 + c[j] * e2;
          dth[j] += e2 * u[j] - e1 * u[j + half];
        }
        double* d = &dst[(t * R + r) * N];
        double* db = &dbias[r * N];
        for (int64_t n = 0; n < N; ++n) {
          d[n] += du[n];
          db[n] += du[n];
        }
      }
    }
    double* dv = &gr.dv[((b * S + t) * H + h) * P];
    const double* x = &hd.x[t * P];
    for (int64_t r = 0; r < R; ++r) {
      const double* dvp = &hg.dvp[(t * R + r) * P];
      const double* psi = &in.psi[(h * R + r) * P];
      double* dpsi = &hs.dpsi[r * P];
      for (int64_t p = 0; p < P; ++p) {
        dv[p] += dvp[p] * psi[p];
        dpsi[p] += dvp[p] * x[p];
      }
    }
    const int64_t o = (b * H + h) * S + t;
    gr.dadt[o] = hg.dadt[t];
    gr.ddt[o] = hg.ddt[t];
    gr.dtrap[o] = hg.dtrap[t];
  }
  hs.dD += hg.dD;
}

// Sum one head's shared part into the gradients (called in a fixed (b,h) order).
void reduce_shared(const MimoShape& s, int64_t b, int64_t h, const HeadShared& hs, MimoGrads& gr) {
  const int64_t S = s.S, R = s.R, N = s.N, P = s.P, G = s.G, H = s.H;
  const int64_t g = h / (H / G);
  for (int64_t t = 0; t < S; ++t)
    for (int64_t r = 0; r < R; ++r) {
      double* dq = &gr.dq[(((b * S + t) * R + r) * G + g) * N];
      double* dk = &gr.dk[(((b * S + t) * R + r) * G + g) * N];
      const double* sq = &hs.dq[(t * R + r) * N];
      const double* sk = &hs.dk[(t * R + r) * N];
      for (int64_t n = 0; n < N; ++n) {
        dq[n] += sq[n];
        dk[n] += sk[n];
      }
    }
  for (int64_t i = 0; i < R * N; ++i) {
    gr.dq_bias[h * R * N + i] += hs.dq_bias[i];
    gr.dk_bias[h * R * N + i] += hs.dk_bias[i];
  }
  for (int64_t i = 0; i < R * P; ++i) {
    gr.dpsi[h * R * P + i] += hs.dpsi[i];
    gr.dphi[h * R * P + i] += hs.dphi[i];
    gr.dzeta[h * R * P + i] += hs.dzeta[i];
  }
  if (s.outproj_norm)
    for (int64_t p = 0; p < P; ++p) gr.dnorm_weight[h * P + p] += hs.dnorm_weight[p];
  gr.dd[h] += hs.dD;
}

// ---- threading ---------------------------------------------------------------------------------
// Workers: MEGACPP_REF_THREADS if set (≥ 1), else std::thread::hardware_concurrency(); one for small problems
// (thread start-up would dominate, e.g. in the finite-difference tests).
int num_workers(const MimoShape& s) {
  const int64_t tasks = s.B * s.H;
  if (tasks * s.S * s.R * s.N * s.P < (int64_t{1} << 22)) return 1;
  int64_t n = std::thread::hardware_concurrency();
  if (const char* e = std::getenv("MEGACPP_REF_THREADS")) n = std::atoll(e);
  return static_cast<int>(std::clamp<int64_t>(n, 1, std::max<int64_t>(tasks, 1)));
}

// Runs f(task, worker) for task in [t0, t1) on `workers` threads (worker < workers); rethrows the first error.
template <class F>
void parallel_tasks(int64_t t0, int64_t t1, int workers, F&& f) {
  if (workers <= 1 || t1 - t0 <= 1) {
    for (int64_t t = t0; t < t1; ++t) f(t, 0);
    return;
  }
  std::atomic<int64_t> next{t0};
  std::exception_ptr err;
  std::mutex mu;
  std::vector<std::thread> th;
  for (int w = 0; w < workers; ++w)
    th.emplace_back([&, w] {
      for (int64_t t = next++; t < t1; t = next++) {
        try {
          f(t, w);
        } catch (...) {
          std::lock_guard<std::mutex> lk(mu);
          if (!err) err = std::current_exception();
        }
      }
    });
  for (auto& x : th) x.join();
  if (err) std::rethrow_exception(err);
}

MimoGrads zero_grads(const MimoShape& s) {
  MimoGrads g;
  g.dq.assign(s.qk_numel(), 0.0);
  g.dk.assign(s.qk_numel(), 0.0);
  g.dv.assign(s.vz_numel(), 0.0);
  g.dz.assign(s.vz_numel(), 0.0);
  g.dadt.assign(s.bhs_numel(), 0.0);
  g.ddt.assign(s.bhs_numel(), 0.0);
  g.dtrap.assign(s.bhs_numel(), 0.0);
  g.dq_bias.assign(s.hrn_numel(), 0.0);
  g.dk_bias.assign(s.hrn_numel(), 0.0);
  g.dpsi.assign(s.hrp_numel(), 0.0);
  g.dzeta.assign(s.hrp_numel(), 0.0);
  g.dphi.assign(s.hrp_numel(), 0.0);
  g.dangles.assign(s.angles_numel(), 0.0);
  g.dd.assign(s.H, 0.0);
  if (s.outproj_norm) g.dnorm_weight.assign(s.H * s.P, 0.0);
  return g;
}

// ================================================================================================
// Step form (§2)
// ================================================================================================
struct StepCoef {
  double alpha, beta, gamma;
};
inline StepCoef step_coef(const Head& hd, int64_t t) {
  const double a = std::exp(hd.adt[t]);
  return {a, (1.0 - hd.lam[t]) * hd.dt[t] * a, hd.lam[t] * hd.dt[t]};
}

// One step of the state update: hs ← α hs + β Σ_r k̄_{t−1} v_{t−1}ᵀ + γ Σ_r k̄_t v_tᵀ.
void step_update(const Head& hd, int64_t t, double* hs) {
  const int64_t R = hd.R, N = hd.N, P = hd.P;
  const StepCoef c = step_coef(hd, t);
  for (int64_t i = 0; i < N * P; ++i) hs[i] *= c.alpha;
  for (int64_t r = 0; r < R; ++r) {
    const double* k1 = &hd.kr[(t * R + r) * N];
    const double* v1 = &hd.vp[(t * R + r) * P];
    const double* k0 = t > 0 ? &hd.kr[((t - 1) * R + r) * N] : nullptr;
    const double* v0 = t > 0 ? &hd.vp[((t - 1) * R + r) * P] : nullptr;
    for (int64_t n = 0; n < N; ++n) {
      double* row = &hs[n * P];
      const double a1 = c.gamma * k1[n];
      for (int64_t p = 0; p < P; ++p) row[p] += a1 * v1[p];
      if (k0) {
        const double a0 = c.beta * k0[n];
        for (int64_t p = 0; p < P; ++p) row[p] += a0 * v0[p];
      }
    }
  }
}

void step_fwd(const Head& hd, std::vector<double>& y) {
  const int64_t S = hd.S, R = hd.R, N = hd.N, P = hd.P;
  y.assign(S * R * P, 0.0);
  std::vector<double> hs(N * P, 0.0);
  for (int64_t t = 0; t < S; ++t) {
    step_update(hd, t, hs.data());
    for (int64_t r = 0; r < R; ++r) {
      const double* q = &hd.qr[(t * R + r) * N];
      const double* v = &hd.vp[(t * R + r) * P];
      double* yr = &y[(t * R + r) * P];
      for (int64_t p = 0; p < P; ++p) yr[p] = hd.D * v[p];
      for (int64_t n = 0; n < N; ++n) {
        const double qn = q[n];
        const double* row = &hs[n * P];
        for (int64_t p = 0; p < P; ++p) yr[p] += qn * row[p];
      }
    }
  }
}

// Reverse mode of the step recurrence. States are checkpointed every kSeg steps and recomputed per segment.
void step_bwd(const Head& hd, const std::vector<double>& gy, HeadGrads& hg) {
  const int64_t S = hd.S, R = hd.R, N = hd.N, P = hd.P;
  constexpr int64_t kSeg = 32;
  const int64_t nseg = (S + kSeg - 1) / kSeg;
  const int64_t NP = N * P;
  hg.reset(S, R, N, P);
  // ckpt[s] = h_{s·kSeg − 1} (state before the segment's first step); ckpt[0] = 0.
  std::vector<double> ckpt(nseg * NP, 0.0);
  {
    std::vector<double> hs(NP, 0.0);
    for (int64_t t = 0; t < S; ++t) {
      if (t % kSeg == 0) std::copy(hs.begin(), hs.end(), &ckpt[(t / kSeg) * NP]);
      step_update(hd, t, hs.data());
    }
  }
  std::vector<double> hist((kSeg + 1) * NP);  // hist[i] = h_{t0+i−1}
  std::vector<double> dh(NP, 0.0);
  std::vector<double> w(N);
  for (int64_t sgi = nseg - 1; sgi >= 0; --sgi) {
    const int64_t t0 = sgi * kSeg, t1 = std::min(S, t0 + kSeg);
    std::copy(&ckpt[sgi * NP], &ckpt[sgi * NP] + NP, hist.begin());
    for (int64_t t = t0; t < t1; ++t) {
      std::copy(&hist[(t - t0) * NP], &hist[(t - t0) * NP] + NP, &hist[(t - t0 + 1) * NP]);
      step_update(hd, t, &hist[(t - t0 + 1) * NP]);
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const double* ht = &hist[(t - t0 + 1) * NP];
      const double* hp = &hist[(t - t0) * NP];
      const StepCoef c = step_coef(hd, t);
      // y_{t,r} = h_tᵀ q̄_{t,r} + D v_{t,r}
      for (int64_t r = 0; r < R; ++r) {
        const double* g = &gy[(t * R + r) * P];
        const double* q = &hd.qr[(t * R + r) * N];
        const double* v = &hd.vp[(t * R + r) * P];
        double* dq = &hg.dqr[(t * R + r) * N];
        double* dv = &hg.dvp[(t * R + r) * P];
        for (int64_t p = 0; p < P; ++p) {
          dv[p] += hd.D * g[p];
          hg.dD += g[p] * v[p];
        }
        for (int64_t n = 0; n < N; ++n) {
          const double* row = &ht[n * P];
          double* drow = &dh[n * P];
          double acc = 0;
          for (int64_t p = 0; p < P; ++p) {
            acc += row[p] * g[p];
            drow[p] += q[n] * g[p];
          }
          dq[n] += acc;
        }
      }
      // h_t = α h_{t−1} + β Σ k̄_{t−1} v_{t−1}ᵀ + γ Σ k̄_t v_tᵀ
      double dalpha = 0, dbeta = 0, dgamma = 0;
      if (t > 0)
        for (int64_t i = 0; i < NP; ++i) dalpha += hp[i] * dh[i];
      for (int64_t lag = 0; lag < 2; ++lag) {
        const int64_t ts = t - lag;
        if (ts < 0) break;
        const double coef = lag == 0 ? c.gamma : c.beta;
        double dco = 0;
        for (int64_t r = 0; r < R; ++r) {
          const double* k = &hd.kr[(ts * R + r) * N];
          const double* v = &hd.vp[(ts * R + r) * P];
          double* dk = &hg.dkr[(ts * R + r) * N];
          double* dv = &hg.dvp[(ts * R + r) * P];
          for (int64_t n = 0; n < N; ++n) {
            const double* drow = &dh[n * P];
            double acc = 0;
            for (int64_t p = 0; p < P; ++p) {
              acc += drow[p] * v[p];
              dv[p] += coef * k[n] * drow[p];
            }
            dco += k[n] * acc;
            dk[n] += coef * acc;
          }
        }
        (lag == 0 ? dgamma : dbeta) = dco;
      }
      const double lam = hd.lam[t], dt = hd.dt[t];
      hg.dadt[t] += dalpha * c.alpha + dbeta * c.beta;
      hg.ddt[t] += dgamma * lam + dbeta * (1.0 - lam) * c.alpha;
      const double dlam = dgamma * dt - dbeta * dt * c.alpha;
      hg.dtrap[t] += dlam * lam * (1.0 - lam);
      for (int64_t i = 0; i < NP; ++i) dh[i] *= c.alpha;
    }
  }
}

// ================================================================================================
// Chunked form (§3)
// ================================================================================================
// Per-head trapezoid weights: γ_t = Δ_t λ_t, γ̃_t = Δ_{t+1}(1−λ_{t+1}) (0 at S−1), factor = γ + γ̃,
// and K̃ = factor ⊙ K̄ (S,R,N).
struct Trap {
  std::vector<double> gamma, factor, kt;
};
void make_trap(const Head& hd, Trap& tr) {
  const int64_t S = hd.S, RN = hd.R * hd.N;
  tr.gamma.resize(S);
  tr.factor.resize(S);
  tr.kt.resize(S * RN);
  for (int64_t t = 0; t < S; ++t) {
    tr.gamma[t] = hd.dt[t] * hd.lam[t];
    const double gt = t + 1 < S ? hd.dt[t + 1] * (1.0 - hd.lam[t + 1]) : 0.0;
    tr.factor[t] = tr.gamma[t] + gt;
    for (int64_t i = 0; i < RN; ++i) tr.kt[t * RN + i] = tr.factor[t] * hd.kr[t * RN + i];
  }
}

// Inclusive in-chunk cumsum of ADT: a[i] = Σ_{s=t0..t0+i} ADT_s.
// Also eseg[ti·L+tj] = exp(a[ti] − a[tj]) = exp(Σ_{s=tj+1..ti} ADT) for tj < ti (0 elsewhere).
void chunk_cumsum(const Head& hd, int64_t t0, int64_t L, std::vector<double>& a, std::vector<double>& eseg) {
  a.resize(L);
  double acc = 0;
  for (int64_t i = 0; i < L; ++i) {
    acc += hd.adt[t0 + i];
    a[i] = acc;
  }
  eseg.assign(L * L, 0.0);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < i; ++j) eseg[i * L + j] = std::exp(a[i] - a[j]);
}

inline double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Forward over all chunks. y (S,R,P) (may be null); states (nc,N,P): the state entering each chunk (may be null).
void chunk_fwd(const Head& hd, const Trap& tr, int64_t L, std::vector<double>* y, std::vector<double>* states) {
  const int64_t S = hd.S, R = hd.R, N = hd.N, P = hd.P, nc = S / L, NP = N * P;
  if (y) y->assign(S * R * P, 0.0);
  if (states) states->assign(nc * NP, 0.0);
  std::vector<double> st(NP, 0.0), a, eseg;
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t t0 = c * L;
    chunk_cumsum(hd, t0, L, a, eseg);
    const double alast = a[L - 1];
    if (states) std::copy(st.begin(), st.end(), &(*states)[c * NP]);
    if (y) {
      for (int64_t ti = 0; ti < L; ++ti) {
        const int64_t t = t0 + ti;
        const double ea = std::exp(a[ti]);
        for (int64_t ro = 0; ro < R; ++ro) {
          const double* q = &hd.qr[(t * R + ro) * N];
          double* yr = &(*y)[(t * R + ro) * P];
          // inter-chunk: e^{a} Q̄ S_c
          for (int64_t n = 0; n < N; ++n) {
            const double qn = ea * q[n];
            const double* row = &st[n * P];
            for (int64_t p = 0; p < P; ++p) yr[p] += qn * row[p];
          }
          // intra-chunk, strictly earlier steps: e^{a_ti − a_tj}(Q̄_i·K̃_j) V'_j
          for (int64_t tj = 0; tj < ti; ++tj) {
            const double e = eseg[ti * L + tj];
            for (int64_t ri = 0; ri < R; ++ri) {
              const double sc = e * dot(q, &tr.kt[((t0 + tj) * R + ri) * N], N);
              const double* v = &hd.vp[((t0 + tj) * R + ri) * P];
              for (int64_t p = 0; p < P; ++p) yr[p] += sc * v[p];
            }
          }
          // same-step diagonal with unrotated q, k and γ_t; D skip
          const double* qu = &hd.qb[(t * R + ro) * N];
          for (int64_t ri = 0; ri < R; ++ri) {
            const double sc = tr.gamma[t] * dot(qu, &hd.kb[(t * R + ri) * N], N);
            const double* v = &hd.vp[(t * R + ri) * P];
            for (int64_t p = 0; p < P; ++p) yr[p] += sc * v[p];
          }
          const double* v = &hd.vp[(t * R + ro) * P];
          for (int64_t p = 0; p < P; ++p) yr[p] += hd.D * v[p];
        }
      }
    }
    // state update: S_{c+1} = e^{a_last} S_c + Σ_j e^{a_last − a_j} K̃_j V'_jᵀ
    const double el = std::exp(alast);
    for (int64_t i = 0; i < NP; ++i) st[i] *= el;
    for (int64_t tj = 0; tj < L; ++tj) {
      const double eb = std::exp(alast - a[tj]);
      for (int64_t r = 0; r < R; ++r) {
        const double* k = &tr.kt[((t0 + tj) * R + r) * N];
        const double* v = &hd.vp[((t0 + tj) * R + r) * P];
        for (int64_t n = 0; n < N; ++n) {
          const double kn = eb * k[n];
          double* row = &st[n * P];
          for (int64_t p = 0; p < P; ++p) row[p] += kn * v[p];
        }
      }
    }
  }
}

// §3.4: reverse chunk loop.
// `states` (nc,N,P) are the chunk-entry states from chunk_fwd.
void chunk_bwd(const Head& hd, const Trap& tr, int64_t L, const std::vector<double>& states,
               const std::vector<double>& gy, HeadGrads& hg) {
  const int64_t S = hd.S, R = hd.R, N = hd.N, P = hd.P, nc = S / L, NP = N * P, M = L * R;
  hg.reset(S, R, N, P);
  std::vector<double> dS(NP, 0.0), dSn(NP), a, eseg, ea(L), eb(L);
  std::vector<double> QK(M * M), VG(M * M);  // QK[i][j] = Q̄_i·K̃_j, VG[i][j] = g_i·V'_j (steps tj < ti only)
  std::vector<double> dkt(M * N);            // ∂L/∂K̃ of the chunk's rows
  std::vector<double> dfactor(S, 0.0), dgdiag(S, 0.0);
  std::vector<double> dda_cs(L), dda_cs_rev(L), W(L * L), tmp(std::max(N, P));
  for (int64_t c = nc - 1; c >= 0; --c) {
    const int64_t t0 = c * L;
    const double* Sc = &states[c * NP];
    chunk_cumsum(hd, t0, L, a, eseg);
    const double alast = a[L - 1], el = std::exp(alast);
    for (int64_t i = 0; i < L; ++i) {
      ea[i] = std::exp(a[i]);
      eb[i] = std::exp(alast - a[i]);
    }
    const double* Qr = &hd.qr[t0 * R * N];   // rows i = ti·R + r
    const double* Kt = &tr.kt[t0 * R * N];
    const double* Vp = &hd.vp[t0 * R * P];
    const double* Gy = &gy[t0 * R * P];
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < (i / R) * R; ++j) {
        QK[i * M + j] = dot(&Qr[i * N], &Kt[j * N], N);
        VG[i * M + j] = dot(&Gy[i * P], &Vp[j * P], P);
      }
    std::fill(dkt.begin(), dkt.end(), 0.0);
    std::fill(dda_cs.begin(), dda_cs.end(), 0.0);
    std::fill(dda_cs_rev.begin(), dda_cs_rev.end(), 0.0);
    std::fill(W.begin(), W.end(), 0.0);
    for (int64_t i = 0; i < M; ++i) {
      const int64_t ti = i / R;
      const double* gi = &Gy[i * P];
      double* dq = &hg.dqr[(t0 * R + i) * N];
      // inter-chunk: dQ̄_i += e^{a_i} S_c g_i;  DDA_CS[t] += Q̄_i·(S_c g_i)
      double s_dda = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double v = dot(&Sc[n * P], gi, P);
        s_dda += Qr[i * N + n] * v;
        dq[n] += ea[ti] * v;
      }
      dda_cs[ti] += s_dda;
      // intra: rows j of strictly earlier steps
      for (int64_t j = 0; j < ti * R; ++j) {
        const int64_t tj = j / R;
        const double e = eseg[ti * L + tj];
        const double cvg = e * VG[i * M + j];
        const double cqk = e * QK[i * M + j];
        const double* kj = &Kt[j * N];
        const double* qi = &Qr[i * N];
        double* dkj = &dkt[j * N];
        for (int64_t n = 0; n < N; ++n) {
          dq[n] += cvg * kj[n];
          dkj[n] += cvg * qi[n];
        }
        double* dvj = &hg.dvp[(t0 * R + j) * P];
        for (int64_t p = 0; p < P; ++p) dvj[p] += cqk * gi[p];
        W[ti * L + tj] += QK[i * M + j] * VG[i * M + j];
      }
      // D skip
      double* dvi = &hg.dvp[(t0 * R + i) * P];
      const double* vi = &Vp[i * P];
      for (int64_t p = 0; p < P; ++p) {
        dvi[p] += hd.D * gi[p];
        hg.dD += gi[p] * vi[p];
      }
    }
    // state-carry terms of rows j: dK̃_j += e^{ā_j} dS V'_j; dV'_j += e^{ā_j} dSᵀ K̃_j; DDA_CS_REV[j] += K̃_j·(dS V'_j)
    for (int64_t j = 0; j < M; ++j) {
      const int64_t tj = j / R;
      const double* vj = &Vp[j * P];
      const double* kj = &Kt[j * N];
      double* dkj = &dkt[j * N];
      double* dvj = &hg.dvp[(t0 * R + j) * P];
      double s_rev = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double* drow = &dS[n * P];
        const double v = dot(drow, vj, P);
        s_rev += kj[n] * v;
        dkj[n] += eb[tj] * v;
        const double kn = eb[tj] * kj[n];
        for (int64_t p = 0; p < P; ++p) dvj[p] += kn * drow[p];
      }
      dda_cs_rev[tj] += s_rev;
    }
    // K̃ = factor·K̄: DFACTOR_t = Σ K̄·dK̃, dK̄ = factor·dK̃
    for (int64_t j = 0; j < M; ++j) {
      const int64_t t = t0 + j / R;
      const double* kr = &hd.kr[(t0 * R + j) * N];
      double* dk = &hg.dkr[(t0 * R + j) * N];
      dfactor[t] += dot(kr, &dkt[j * N], N);
      for (int64_t n = 0; n < N; ++n) dk[n] += tr.factor[t] * dkt[j * N + n];
    }
    // same-step diagonal (unrotated q, k, γ_t)
    for (int64_t ti = 0; ti < L; ++ti) {
      const int64_t t = t0 + ti;
      const double gam = tr.gamma[t];
      for (int64_t ro = 0; ro < R; ++ro)
        for (int64_t ri = 0; ri < R; ++ri) {
          const double* qo = &hd.qb[(t * R + ro) * N];
          const double* ki = &hd.kb[(t * R + ri) * N];
          const double* go = &gy[(t * R + ro) * P];
          const double* vi = &hd.vp[(t * R + ri) * P];
          const double qk = dot(qo, ki, N);
          const double gv = dot(go, vi, P);
          const double E = gam * gv;
          double* dqo = &hg.dqu[(t * R + ro) * N];
          double* dki = &hg.dku[(t * R + ri) * N];
          for (int64_t n = 0; n < N; ++n) {
            dqo[n] += E * ki[n];
            dki[n] += E * qo[n];
          }
          double* dvi = &hg.dvp[(t * R + ri) * P];
          for (int64_t p = 0; p < P; ++p) dvi[p] += gam * qk * go[p];
          dgdiag[t] += qk * gv;
        }
    }
    // decay gradients of this chunk
    double dda = 0;
    for (int64_t i = 0; i < NP; ++i) dda += Sc[i] * dS[i];
    dda *= el;
    // dADT_s = DDA + Σ_{t≥s} e^{a_t} DDA_CS[t] + Σ_{j<s} e^{ā_j} DDA_CS_REV[j] + Σ_{ti≥s>tj} e^{a_ti−a_tj} W[ti][tj]
    {
      double suffix = 0;
      std::vector<double>& out = hg.dadt;
      for (int64_t s = L - 1; s >= 0; --s) {
        suffix += ea[s] * dda_cs[s];
        out[t0 + s] = dda + suffix;
      }
      double prefix = 0, seg = 0;
      for (int64_t s = 0; s < L; ++s) {
        if (s > 0) {
          prefix += eb[s - 1] * dda_cs_rev[s - 1];
          // seg(s) = seg(s−1) + Σ_{ti≥s} Mx[ti][s−1] − Σ_{tj<s−1} Mx[s−1][tj]
          for (int64_t ti = s; ti < L; ++ti) seg += eseg[ti * L + s - 1] * W[ti * L + s - 1];
          for (int64_t tj = 0; tj < s - 1; ++tj) seg -= eseg[(s - 1) * L + tj] * W[(s - 1) * L + tj];
        }
        out[t0 + s] += prefix + seg;
      }
    }
    // dS_c = e^{a_last} dS_{c+1} + Σ_i e^{a_i} Q̄_iᵀ g_i
    for (int64_t i = 0; i < NP; ++i) dSn[i] = el * dS[i];
    for (int64_t i = 0; i < M; ++i) {
      const double e = ea[i / R];
      const double* qi = &Qr[i * N];
      const double* gi = &Gy[i * P];
      for (int64_t n = 0; n < N; ++n) {
        const double qn = e * qi[n];
        double* row = &dSn[n * P];
        for (int64_t p = 0; p < P; ++p) row[p] += qn * gi[p];
      }
    }
    dS.swap(dSn);
  }
  // trapezoid: γ_t = Δ_t λ_t (factor_t and the diagonal), γ̃_{t−1} = Δ_t (1−λ_t) (factor_{t−1})
  for (int64_t t = 0; t < S; ++t) {
    const double dg = dfactor[t] + dgdiag[t];
    const double F = t > 0 ? dfactor[t - 1] : 0.0;
    const double lam = hd.lam[t], dt = hd.dt[t];
    hg.ddt[t] = dg * lam + F * (1.0 - lam);
    hg.dtrap[t] = (dg - F) * dt * lam * (1.0 - lam);
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Public API
// ------------------------------------------------------------------------------------------------
MimoInputs make_random_inputs(const MimoShape& s, uint64_t seed) {
  s.validate();
  HostRng rng(seed * 0x9E3779B97F4A7C15ull + 0x5EEDull);
  const int64_t NA = s.n_ang();
  MimoInputs in;
  auto fill_normal = [&](std::vector<double>& v, int64_t n) {
    v.resize(n);
    for (auto& x : v) x = rng.normal();
  };
  auto fill_uniform = [&](std::vector<double>& v, int64_t n, double lo, double hi) {
    v.resize(n);
    for (auto& x : v) x = rng.uniform(lo, hi);
  };
  // q, k: RMS-normalised over N per (b,t,r,g)
  for (auto* v : {&in.q, &in.k}) {
    fill_normal(*v, s.qk_numel());
    for (int64_t row = 0; row < s.qk_numel() / s.N; ++row) {
      double* x = &(*v)[row * s.N];
      double ss = 0;
      for (int64_t n = 0; n < s.N; ++n) ss += x[n] * x[n];
      const double rs = 1.0 / std::sqrt(ss / static_cast<double>(s.N) + 1e-5);
      for (int64_t n = 0; n < s.N; ++n) x[n] *= rs;
    }
  }
  fill_normal(in.v, s.vz_numel());
  fill_normal(in.z, s.vz_numel());
  // decay: dt_bias = softplus⁻¹(dt0), dt0 log-uniform in [1e-3, 1e-1]; dd_dt, dd_A ~ N(0,1) (B,S,H)
  std::vector<double> dt_bias(s.H), dd_dt, dd_A;
  for (auto& x : dt_bias) {
    const double dt0 = std::exp(rng.uniform(std::log(1e-3), std::log(1e-1)));
    x = dt0 + std::log(-std::expm1(-dt0));  // softplus⁻¹
  }
  fill_normal(dd_dt, s.B * s.S * s.H);
  fill_normal(dd_A, s.B * s.S * s.H);
  prep::DecayPrepOutputs dp = prep::decay_prep_forward(s.B, s.S, s.H, dd_dt, dd_A, dt_bias);
  in.adt = std::move(dp.adt);
  in.dt = std::move(dp.dt);
  fill_normal(in.trap, s.bhs_numel());
  fill_uniform(in.q_bias, s.hrn_numel(), 0.5, 1.5);
  fill_uniform(in.k_bias, s.hrn_numel(), 0.5, 1.5);
  const double invR = 1.0 / static_cast<double>(s.R);
  fill_uniform(in.psi, s.hrp_numel(), 0.7 * invR, 1.3 * invR);
  fill_uniform(in.phi, s.hrp_numel(), 0.7 * invR, 1.3 * invR);
  fill_uniform(in.zeta, s.hrp_numel(), 0.7, 1.3);
  std::vector<double> raw;
  fill_normal(raw, s.B * s.S * NA);
  in.angles = prep::angle_cumsum_forward(s.B, s.S, s.H, NA, raw, in.dt);
  fill_uniform(in.d, s.H, 0.7, 1.3);
  if (s.outproj_norm) fill_uniform(in.norm_weight, s.H * s.P, 0.7, 1.3);
  return in;
}

namespace {
// Per-worker scratch.
struct Worker {
  Head hd;
  Trap tr;
  HeadGrads hg;
  std::vector<double> y, gy, states;
};

enum class Form { step, chunked };

std::vector<double> forward_impl(const MimoShape& s, const MimoInputs& in, Form form) {
  check_inputs(s, in);
  std::vector<double> out(s.vz_numel(), 0.0);
  const int64_t tasks = s.B * s.H;
  const int nw = num_workers(s);
  std::vector<Worker> ws(nw);
  parallel_tasks(0, tasks, nw, [&](int64_t task, int w) {
    Worker& k = ws[w];
    const int64_t b = task / s.H, h = task % s.H;
    load_head(s, in, b, h, k.hd);
    if (form == Form::step) {
      step_fwd(k.hd, k.y);
    } else {
      make_trap(k.hd, k.tr);
      chunk_fwd(k.hd, k.tr, s.L, &k.y, nullptr);
    }
    epilogue_fwd(s, in, b, h, k.y, out);  // writes out[b,:,h,:] only
  });
  return out;
}

MimoGrads backward_impl(const MimoShape& s, const MimoInputs& in, const std::vector<double>& dout, Form form) {
  check_inputs(s, in);
  check_size("dout", dout, s.vz_numel());
  MimoGrads gr = zero_grads(s);
  const int64_t tasks = s.B * s.H;
  const int nw = num_workers(s);
  std::vector<Worker> ws(nw);
  std::vector<HeadShared> shared(nw);
  // Waves of nw heads: the per-head disjoint gradients are written in parallel, the shared parts are summed
  // afterwards in (b,h) order, so the result is bitwise independent of the number of threads.
  for (int64_t w0 = 0; w0 < tasks; w0 += nw) {
    const int64_t w1 = std::min(tasks, w0 + nw);
    parallel_tasks(w0, w1, nw, [&](int64_t task, int w) {
      Worker& k = ws[w];
      HeadShared& hs = shared[task - w0];
      hs.reset(s);
      const int64_t b = task / s.H, h = task % s.H;
      load_head(s, in, b, h, k.hd);
      if (form == Form::step) {
        step_fwd(k.hd, k.y);
        epilogue_bwd(s, in, b, h, k.y, dout, k.gy, gr, hs);
        step_bwd(k.hd, k.gy, k.hg);
      } else {
        make_trap(k.hd, k.tr);
        chunk_fwd(k.hd, k.tr, s.L, &k.y, &k.states);
        epilogue_bwd(s, in, b, h, k.y, dout, k.gy, gr, hs);
        chunk_bwd(k.hd, k.tr, s.L, k.states, k.gy, k.hg);
      }
      unprep(s, in, b, h, k.hd, k.hg, gr, hs);
    });
    for (int64_t task = w0; task < w1; ++task) reduce_shared(s, task / s.H, task % s.H, shared[task - w0], gr);
  }
  return gr;
}
}  // namespace

std::vector<double> mimo_forward_step(const MimoShape& s, const MimoInputs& in) {
  return forward_impl(s, in, Form::step);
}

std::vector<double> mimo_forward_chunked(const MimoShape& s, const MimoInputs& in) {
  return forward_impl(s, in, Form::chunked);
}

std::vector<double> mimo_chunk_states(const MimoShape& s, const MimoInputs& in) {
  check_inputs(s, in);
  const int64_t NP = s.N * s.P, nc = s.nchunks(), tasks = s.B * s.H;
  std::vector<double> all(s.B * s.H * nc * NP);
  const int nw = num_workers(s);
  std::vector<Worker> ws(nw);
  parallel_tasks(0, tasks, nw, [&](int64_t task, int w) {
    Worker& k = ws[w];
    load_head(s, in, task / s.H, task % s.H, k.hd);
    make_trap(k.hd, k.tr);
    chunk_fwd(k.hd, k.tr, s.L, nullptr, &k.states);
    std::copy(k.states.begin(), k.states.end(), &all[task * nc * NP]);
  });
  return all;
}

MimoGrads mimo_backward_chunked(const MimoShape& s, const MimoInputs& in, const std::vector<double>& dout) {
  return backward_impl(s, in, dout, Form::chunked);
}

MimoGrads mimo_backward_step(const MimoShape& s, const MimoInputs& in, const std::vector<double>& dout) {
  return backward_impl(s, in, dout, Form::step);
}

}  // namespace megacpp::mimo
