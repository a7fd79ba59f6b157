// The LSTM time loop of one layer and direction on CPU, forward and backward: what lstm_train/nn/compiled.py
// builds on first use. The equations are those of fast.py; only the loop moved out of Python.
//
// Why it is fast:
// - Each batch row's recurrence is independent of the other rows, so threads split the batch and each runs
//   the whole time loop over its rows: no synchronisation between steps.
// - Per step, the recurrent matrix product and the gate maths are one pass: a register-blocked kernel
//   accumulates R rows x 4 gates x one vector of hidden units, starting from the projected input, and
//   applies the cell equations to the accumulators before writing anything (backward: the gate gradients
//   of a row are computed, then multiplied by W_hh while still in L1). ATen's GEMMs do everything outside
//   the loop: the input projection and the weight gradients, one GEMM each over all steps.
// - Vectorised activations (at::vec::Vectorized): sigmoid from a polynomial exp, tanh(x) = 2 sigmoid(2x) - 1
//   (float32: exp512 below with AVX-512, else ATen's exp_u20; float64: SLEEF's 1-ulp exp, so float64 matches
//   torch to ~1e-15).
// - bf16 products (under torch.autocast, where the CPU has AVX512-BF16 and the build defines LSTM_TRAIN_BF16):
//   the same loops with x, h, W and the gate gradients rounded to bfloat16 for the products (vdpbf16ps: two
//   products per float32 lane and instruction, accumulated in float32); the cell maths, the states, the
//   accumulators and the saved activations stay float32. The GEMMs outside the loop take bfloat16 too.
//   Or (products kOnednnBf16) the same roundings with each step's products by oneDNN's brgemm ukernel, which
//   torch ships and which runs on AMX tiles where the CPU has them: a block of up to kOnednnRows rows gets its
//   pre-activations (x_t W_ih^T + h_prev W_hh^T) from two calls, then the cell runs on them from L1/L2; the
//   backward's dL/dh_{t-1} is one call (compiled.py chooses between the two).
// - The elementwise LSTM variants (lstm_train/nn/variants.py: Greff et al.'s V, NIG, NFG, NOG, NIAF, NOAF, CIFG
//   and NP) are flags of the one cell below and of its gradient (Variant), with their peepholes, not copies.
// - Zoneout's training masks are hashed from a counter (zoneout_keys) where the cell uses them, and again in the
//   backward: nothing of (T, B, H) is drawn, stored or read for them.
// Gates stay in torch's (i, f, g, o) order; padded batches arrive sorted longest first, batch_sizes[t] rows
// run at step t (as in PackedSequence) and every row past its length is written as zeros.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>
#if defined(LSTM_TRAIN_BF16)
#include <ATen/native/CPUBlas.h>  // oneDNN's brgemm ukernel, as torch's own CPU attention calls it
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)  // torch >= 2.6 or so; before, the kernel's own bfloat16 loops only
#define LSTM_TRAIN_ONEDNN
#endif
#endif

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;
using at::vec::Vectorized;

// Rows per register block: R rows x 4 accumulators (+ 4 weight vectors) must fit the vector registers.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRows = 6;  // 24 + 4 of 32 zmm registers
#else
constexpr int kRows = 3;  // 12 + 4 of 16 ymm registers
#endif
// Which matrix products a call takes: in the inputs' dtype, or bfloat16 ones (float32 inputs) in the
// register-blocked loops (vdpbf16ps) or by oneDNN's brgemm (compiled.py's PRODUCTS).
constexpr int64_t kInputDtype = 0, kKernelBf16 = 1, kOnednnBf16 = 2;
// Rows per block with oneDNN's products: two AMX tiles of 16 rows, and a (32, 4H) float32 block of
// pre-activations stays in L2 up to H = 1024.
constexpr int64_t kOnednnRows = 32;
// Rows (steps x batch) up to which a call skips packing the weights and uses ATen's GEMMs (as does any T=1 call).
constexpr int64_t kFewRows = 16;
// Multiply-adds of a call each thread must get, or fewer threads run it (a parallel region costs microseconds).
constexpr int64_t kParallelWork = 1 << 20;

#if defined(CPU_CAPABILITY_AVX512)
// e^x, float32, AVX-512, for x in [-87, 87]: n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts), e^r by
// Cephes' expf polynomial (about 1 ulp), times 2^n by vscalefps. Half the instructions of ATen's exp_u20:
// the gate activations were a third of a step at hidden size 64.
inline __m512 exp512(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}
#endif

template <typename T>
struct Lanes {
  using V = Vectorized<T>;
  static constexpr int64_t N = V::size();
  static V load(const T* p, int64_t n) { return n == N ? V::loadu(p) : V::loadu(p, n); }
  static void store(const V& v, T* p, int64_t n) {
    if (n == N) {
      v.store(p);
    } else {
      v.store(p, n);
    }
  }
  static V sigmoid(const V& x) {
    const V one(T(1));
    if constexpr (std::is_same_v<T, float>) {
#if defined(CPU_CAPABILITY_AVX512)
      // clamped: sigmoid is 0 or 1 in float32 beyond +-87, and e^87 is still finite
      const __m512 y = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(87.f)), _mm512_set1_ps(-87.f));
      return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), y))));
#else
      return one / (one + x.neg().exp_u20());
#endif
    } else {
      return one / (one + x.neg().exp());  // SLEEF's 1-ulp exp: float64 is for checking against torch
    }
  }
  static V tanh(const V& x) {
    const V one(T(1)), two(T(2));
    return two * sigmoid(two * x) - one;
  }
};

// acc[r][q] += sum over k < K of a[r * lda + k] * w[k][q] for one vector of hidden units: the register-blocked
// product (4 vector loads and R broadcasts per 4R FMAs). w: a (K, 4, N) slice of pack_forward's layout.
template <typename T, int R>
__attribute__((always_inline)) inline void accumulate(Vectorized<T> (&acc)[R][4], const T* a, int64_t lda, int64_t K,
                                                      const T* w) {
  using V = Vectorized<T>;
  constexpr int64_t N = V::size();
  for (int64_t k = 0; k < K; ++k, w += 4 * N) {
    const V w0 = V::loadu(w), w1 = V::loadu(w + N), w2 = V::loadu(w + 2 * N), w3 = V::loadu(w + 3 * N);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V x(a[r * lda + k]);
      acc[r][0] = at::vec::fmadd(x, w0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(x, w1, acc[r][1]);
      acc[r][2] = at::vec::fmadd(x, w2, acc[r][2]);
      acc[r][3] = at::vec::fmadd(x, w3, acc[r][3]);
    }
  }
}

// Which cell (lstm_train/nn/variants.py, Variant.kernel_flags): flags of what V changes, and the peepholes. A removed
// gate is the constant 1 (CIFG: f = 1 - i); NIAF and NOAF drop tanh from g and from h. peep: (3, H) peephole
// weights of i, f (from c_{t-1}) and o (from c_t), zero for a gate without one; null for none (the plain cell).
enum : int64_t { kNoInputGate = 1, kNoForgetGate = 2, kNoOutputGate = 4, kNoInputAct = 8, kNoOutputAct = 16, kCoupled = 32 };

// A 32-bit integer hash: xorshift-multiply rounds in the form of MurmurHash3's finaliser, with the constants of
// C. Wellons' "lowbias32" (hash-prospector). variants.py's mix32 computes the same bits with torch's int64 ops.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}

// Zoneout (Krueger et al.) in training: counter-based masks, never stored. A unit's 32 bits at step t (the loop's
// order), row b, unit j are mix32(key(t, b) ^ unit(j)), with key(t, b) = mix32(mix32(t ^ s0) ^ mix32(b ^ s1)) from the
// call's seed (s0, s1) and unit(j) = mix32(j + 0x9e3779b9); c keeps its previous value where the high 16 bits are
// below floor(rate_c 2^16), h where the low 16 are below floor(rate_h 2^16). variants.py's zoneout_bits is the
// same function; the backward recomputes the masks. -> the keys of every step and row (T B of them), then of the
// units (H rounded up to 64, so a vector's lanes past H read a key too).
Tensor zoneout_keys(at::IntArrayRef seed, int64_t T, int64_t B, int64_t H) {
  const int64_t units = (H + 63) / 64 * 64;
  Tensor keys = at::empty({T * B + units}, at::kInt);
  auto* k = reinterpret_cast<uint32_t*>(keys.data_ptr<int32_t>());
  const auto s0 = static_cast<uint32_t>(seed[0]), s1 = static_cast<uint32_t>(seed[1]);
  std::vector<uint32_t> rows(B);
  for (int64_t b = 0; b < B; ++b) {
    rows[b] = mix32(static_cast<uint32_t>(b) ^ s1);
  }
  for (int64_t t = 0; t < T; ++t) {
    const uint32_t step = mix32(static_cast<uint32_t>(t) ^ s0);
    for (int64_t b = 0; b < B; ++b) {
      k[t * B + b] = mix32(step ^ rows[b]);
    }
  }
  for (int64_t j = 0; j < units; ++j) {
    k[T * B + j] = mix32(static_cast<uint32_t>(j) + 0x9e3779b9u);
  }
  return keys;
}

// What the cell is (flags, peep) and the regularisers around it. Zoneout of c and h (zone_c, zone_h): at test
// (keys null) the expectation, mask = the rate; in training the hashed masks above, keys: the step's rows' keys
// (from the row shifted() was given), units: the units' keys. The cell reads them, and h_prev, at a step's and
// block's offset (shifted()).
template <typename T>
struct Variant {
  int64_t flags = 0;
  const T* peep = nullptr;
  const T* drop = nullptr;  // recurrent dropout: one (B, H) mask (scaled) on the h entering the products, or null
  bool zone_c = false, zone_h = false;
  T rate_c = 0, rate_h = 0;
  int32_t below_c = 0, below_h = 0;  // the thresholds of the 16 bits, floor(rate 2^16)
  const uint32_t* keys = nullptr;
  const uint32_t* units = nullptr;
  const T* h_prev = nullptr;
  bool has(int64_t flag) const { return (flags & flag) != 0; }
  // zoneout's rates and, in training, its keys (zoneout_keys, with `rows` keys of steps and rows; undefined at
  // test); the caller keeps them alive
  void zoneout(double c, double h, const Tensor& key_table, int64_t rows) {
    zone_c = c > 0;
    zone_h = h > 0;
    below_c = static_cast<int32_t>(c * 65536.0);
    below_h = static_cast<int32_t>(h * 65536.0);
    rate_c = static_cast<T>(below_c / 65536.0);  // at test the training masks' exact mean
    rate_h = static_cast<T>(below_h / 65536.0);
    if (key_table.defined()) {
      keys = reinterpret_cast<const uint32_t*>(key_table.data_ptr<int32_t>());
      units = keys + rows;
    }
  }
  // This one, its zoneout keys from row `row` of step t, h_prev the rows that step reads.
  Variant shifted(int64_t t, int64_t row, int64_t B, int64_t H, const T* h_rows) const {
    Variant v = *this;
    v.keys = keys == nullptr ? nullptr : keys + t * B + row;
    v.drop = drop == nullptr ? nullptr : drop + row * H;
    v.h_prev = h_rows;
    return v;
  }
};

// Zoneout's masks of c and h for row r and the vector of units from j (see Variant). The lane loop is plain
// integer maths, which the compiler vectorises.
template <typename T>
inline void zoneout_masks(const Variant<T>& v, int64_t r, int64_t j, Vectorized<T>& mc, Vectorized<T>& mh) {
  using V = Vectorized<T>;
  if (v.keys == nullptr) {
    mc = V(v.rate_c);
    mh = V(v.rate_h);
    return;
  }
  constexpr int64_t N = V::size();
  alignas(64) T c[N];
  alignas(64) T h[N];
  const uint32_t key = v.keys[r];
  const uint32_t* units = v.units + j;
  for (int64_t l = 0; l < N; ++l) {
    const uint32_t bits = mix32(key ^ units[l]);
    c[l] = static_cast<int32_t>(bits >> 16) < v.below_c ? T(1) : T(0);  // signed: AVX2 has no unsigned compare
    h[l] = static_cast<int32_t>(bits & 0xffffu) < v.below_h ? T(1) : T(0);
  }
  mc = V::loadu(c);
  mh = V::loadu(h);
}

// The cell on one vector of hidden units (the first n of them real, from unit j) of one row, from its
// pre-activations: writes the new c and h at c and h, and the activations at gates (a row of 4H from the vector's
// offset) unless null. Always inlined into the register blocks that call it: with a third caller GCC stopped
// inlining it, and a call per row and vector doubled the forward's time (measured).
template <typename T>
__attribute__((always_inline)) inline void cell(Vectorized<T> i_pre, Vectorized<T> f_pre, const Vectorized<T>& g_pre,
                                                Vectorized<T> o_pre, const T* c_prev, T* c, T* h, T* gates, int64_t H,
                                                int64_t n, const Variant<T>& v, int64_t j, int64_t r) {
  using L = Lanes<T>;
  using V = typename L::V;
  const V one(T(1)), cp = L::load(c_prev, n);
  if (v.peep != nullptr) {
    i_pre = at::vec::fmadd(L::load(v.peep + j, n), cp, i_pre);
    f_pre = at::vec::fmadd(L::load(v.peep + H + j, n), cp, f_pre);
  }
  const V i = v.has(kNoInputGate) ? one : L::sigmoid(i_pre);
  const V f = v.has(kCoupled) ? one - i : v.has(kNoForgetGate) ? one : L::sigmoid(f_pre);
  const V g = v.has(kNoInputAct) ? g_pre : L::tanh(g_pre);
  const V c_new = at::vec::fmadd(f, cp, i * g);
  if (v.peep != nullptr) {
    o_pre = at::vec::fmadd(L::load(v.peep + 2 * H + j, n), c_new, o_pre);  // the output gate sees the new c
  }
  const V o = v.has(kNoOutputGate) ? one : L::sigmoid(o_pre);
  if (gates != nullptr) {
    L::store(i, gates, n);
    L::store(f, gates + H, n);
    L::store(g, gates + 2 * H, n);
    L::store(o, gates + 3 * H, n);
  }
  // zoneout: the state carried on keeps each unit's previous value where the mask says (the gates above read the
  // new c; the backward recomputes it from them)
  V mc, mh;
  if (v.zone_c || v.zone_h) {
    zoneout_masks(v, r, j, mc, mh);
  }
  // m old + (1 - m) new: exactly old or new for a training mask of 1 or 0
  L::store(v.zone_c ? at::vec::fmadd(mc, cp, (one - mc) * c_new) : c_new, c, n);
  const V h_new = o * (v.has(kNoOutputAct) ? c_new : L::tanh(c_new));
  L::store(v.zone_h ? at::vec::fmadd(mh, L::load(v.h_prev + r * H + j, n), (one - mh) * h_new) : h_new, h, n);
}

// One step of R rows x one vector of hidden units (the first j, n of them real), all in registers:
// pre-activations = bias (4H, or null) + products(acc) (x_t W_ih^T + h_prev W_hh^T), then the cell. c_prev, c, h:
// rows of H, gates: rows of 4H for the activations, or null if not kept.
template <typename T, int R, typename Products>
__attribute__((always_inline)) inline void forward_cells(const Products& products, const T* bias, const T* c_prev,
                                                         T* c, T* h, T* gates, int64_t H, int64_t j, int64_t n,
                                                         const Variant<T>& v) {
  using L = Lanes<T>;
  using V = typename L::V;
  V acc[R][4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const V b = bias == nullptr ? V(T(0)) : L::load(bias + q * H + j, n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      acc[r][q] = b;
    }
  }
  products(acc);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    cell<T>(acc[r][0], acc[r][1], acc[r][2], acc[r][3], c_prev + r * H + j, c + r * H + j, h + r * H + j,
            gates == nullptr ? nullptr : gates + r * 4 * H + j, H, n, v, j, r);
  }
}

// forward_cells with float32 (or float64) products. w_ih, w_hh: this vector's (K, 4, N) slices of pack_forward's
// layouts; x: rows of I, h_prev: rows of H (with recurrent dropout: already times its mask).
template <typename T, int R>
void forward_block(const T* x, const T* bias, const T* w_ih, const T* w_hh, const T* h_prev, const T* c_prev, T* c,
                   T* h, T* gates, int64_t I, int64_t H, int64_t j, int64_t n, const Variant<T>& v) {
  const auto products = [&](Vectorized<T>(&acc)[R][4]) {
    accumulate<T, R>(acc, x, I, I, w_ih);
    accumulate<T, R>(acc, h_prev, H, H, w_hh);
  };
  forward_cells<T, R>(products, bias, c_prev, c, h, gates, H, j, n, v);
}

// dh_out (R rows x 4 vectors of hidden units from j, the first n of them real) = init + products(acc) (d_pre @
// W_hh) [times scale, recurrent dropout's mask], all in registers. init, dh_out, scale: rows of H, init null for
// zeros, scale null for none.
template <typename T, int R, typename Products>
__attribute__((always_inline)) inline void backward_cells(const Products& products, const T* init, T* dh_out,
                                                          int64_t H, int64_t j, int64_t n, const T* scale = nullptr) {
  using L = Lanes<T>;
  using V = typename L::V;
  V acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const int64_t m = std::clamp<int64_t>(n - q * L::N, 0, L::N);
      acc[r][q] = scale != nullptr || init == nullptr || m == 0 ? V(T(0)) : L::load(init + r * H + j + q * L::N, m);
    }
  }
  products(acc);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const int64_t m = std::clamp<int64_t>(n - q * L::N, 0, L::N);
      if (m > 0 && scale != nullptr) {
        const int64_t at_ = r * H + j + q * L::N;
        const V base = init == nullptr ? V(T(0)) : L::load(init + at_, m);
        acc[r][q] = at::vec::fmadd(acc[r][q], L::load(scale + at_, m), base);
      }
      if (m > 0) {
        L::store(acc[r][q], dh_out + r * H + j + q * L::N, m);
      }
    }
  }
}

// backward_cells with float32 (or float64) products. d_pre: rows of 4H; w: this slice of pack_backward's W_hh,
// (4H, 4, N).
template <typename T, int R>
void backward_block(const T* d_pre, const T* w, const T* init, T* dh_out, int64_t H, int64_t j, int64_t n,
                    const T* scale) {
  const auto products = [&](Vectorized<T>(&acc)[R][4]) { accumulate<T, R>(acc, d_pre, 4 * H, 4 * H, w); };
  backward_cells<T, R>(products, init, dh_out, H, j, n, scale);
}

#if defined(LSTM_TRAIN_BF16)
using bf16_t = uint16_t;  // bfloat16 bits, as ATen stores at::BFloat16
constexpr int64_t kLanes = 16;  // float32 lanes of a zmm register; a zmm of bfloat16 holds 16 pairs

// acc[r][q] += sum over k < 2 K2 of a[r * lda + k] * w[k][q][lane]: per k pair, 4 weight vectors of 16 lanes x 2
// products and R broadcast pairs of a. w: a (K2, 4, 16, 2) slice of pack_bf16's layout; a's rows are even-padded.
template <int R>
__attribute__((always_inline)) inline void accumulate_bf16(Vectorized<float> (&acc)[R][4], const bf16_t* a,
                                                           int64_t lda, int64_t K2, const bf16_t* w) {
  for (int64_t k = 0; k < K2; ++k, w += 4 * 2 * kLanes) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w), w1 = (__m512bh)_mm512_loadu_si512(w + 2 * kLanes);
    const __m512bh w2 = (__m512bh)_mm512_loadu_si512(w + 4 * kLanes), w3 = (__m512bh)_mm512_loadu_si512(w + 6 * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * k, sizeof(pair));
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, w1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], x, w2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], x, w3);
    }
  }
}

// The first n of 16 floats at src, rounded to bfloat16 (nearest even) at dst.
inline void store_bf16(const float* src, bf16_t* dst, int64_t n) {
  const __mmask16 m = n >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src));
  _mm256_mask_storeu_epi16(dst, m, (__m256i)v);
}

// forward_block with bfloat16 products: x_bf, h_prev_bf rows of Ip, Hp (even) bfloat16; also writes h as bfloat16
// at h_bf (rows of Hp), for the next step's product.
template <int R>
void forward_block_bf16(const bf16_t* x_bf, const float* bias, const bf16_t* w_ih, const bf16_t* w_hh,
                        const bf16_t* h_prev_bf, bf16_t* h_bf, const float* c_prev, float* c, float* h, float* gates,
                        int64_t Ip, int64_t Hp, int64_t H, int64_t j, int64_t n, const Variant<float>& v) {
  const auto products = [&](Vectorized<float>(&acc)[R][4]) {
    accumulate_bf16<R>(acc, x_bf, Ip, Ip / 2, w_ih);
    accumulate_bf16<R>(acc, h_prev_bf, Hp, Hp / 2, w_hh);
  };
  forward_cells<float, R>(products, bias, c_prev, c, h, gates, H, j, n, v);
  for (int r = 0; r < R; ++r) {
    store_bf16(h + r * H + j, h_bf + r * Hp + j, n);
  }
}

// backward_block with bfloat16 products: d_pre_bf rows of 4H bfloat16, w: pack_bf16's slice of W_hh^T.
template <int R>
void backward_block_bf16(const bf16_t* d_pre_bf, const bf16_t* w, const float* init, float* dh_out, int64_t H,
                         int64_t j, int64_t n) {
  const auto products = [&](Vectorized<float>(&acc)[R][4]) { accumulate_bf16<R>(acc, d_pre_bf, 4 * H, 2 * H, w); };
  backward_cells<float, R>(products, init, dh_out, H, j, n);
}

// call_block's kernels; float32 only (the dispatch also instantiates them for float64, which never runs them).
template <typename T, int R>
struct ForwardBlockBf16 {
  template <typename... Args>
  static void run(Args... args) {
    if constexpr (std::is_same_v<T, float>) {
      forward_block_bf16<R>(args...);
    }
  }
};

template <typename T, int R>
struct BackwardBlockBf16 {
  template <typename... Args>
  static void run(Args... args) {
    if constexpr (std::is_same_v<T, float>) {
      backward_block_bf16<R>(args...);
    }
  }
};

// count floats at src, rounded to bfloat16 at dst (float32 only, as above).
template <typename T>
void round_bf16(const T* src, bf16_t* dst, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t k = 0; k < count; k += kLanes) {
      store_bf16(src + k, dst + k, std::min(kLanes, count - k));
    }
  }
}

// A float32 weight as accumulate_bf16 reads it: (U / 16 or U / 64 rounded up, K / 2 rounded up, 4, 16, 2)
// bfloat16, zeros beyond the weight. Forward (`transposed` false): W (4U, K) = W_ih or W_hh; element
// [u][k][q][l][s] is W[q U + 16 u + l][2 k + s] (q: the gate). Backward (true): W (K, U) = W_hh, read as its
// transpose; element [u][k][q][l][s] is W[2 k + s][64 u + 16 q + l] (4 vectors of hidden units).
Tensor pack_bf16(const Tensor& weight, bool transposed) {
  const Tensor w = weight.contiguous();
  const int64_t U = transposed ? w.size(1) : w.size(0) / 4, K = transposed ? w.size(0) : w.size(1);
  const int64_t K2 = (K + 1) / 2, per = transposed ? 4 * kLanes : kLanes, blocks = (U + per - 1) / per;
  Tensor packed = at::zeros({blocks, K2, 4, kLanes, 2}, w.options().dtype(at::kBFloat16));
  const float* src = w.data_ptr<float>();
  at::BFloat16* dst = packed.data_ptr<at::BFloat16>();
  at::parallel_for(0, U, std::max<int64_t>(1, (1 << 13) / K), [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t u = unit / per, l = unit % kLanes;
      for (int64_t q0 = 0; q0 < (transposed ? 1 : 4); ++q0) {
        const int64_t q = transposed ? unit % per / kLanes : q0;
        at::BFloat16* out = dst + ((u * K2 * 4 + q) * kLanes + l) * 2;  // then + k / 2 * 4 * 32 + k % 2
        for (int64_t k = 0; k < K; ++k) {
          const float v = transposed ? src[k * U + unit] : src[(q * U + unit) * K + k];
          out[k / 2 * 4 * kLanes * 2 + k % 2] = at::BFloat16(v);  // rounded to nearest even
        }
      }
    }
  });
  return packed;
}

// (T, B, K) float32 -> bfloat16 with K padded to even with zeros, so a pair never reads past a row.
Tensor even_bf16(const Tensor& t) {
  const int64_t K = t.size(-1);
  return at::constant_pad_nd(t, {0, K & 1}).to(at::kBFloat16).contiguous();
}

inline const bf16_t* bits(const Tensor& t) { return reinterpret_cast<const bf16_t*>(t.data_ptr<at::BFloat16>()); }
inline bf16_t* bits_mut(Tensor& t) { return reinterpret_cast<bf16_t*>(t.data_ptr<at::BFloat16>()); }

// oneDNN's brgemm reads B as bfloat16 pairs along K (VNNI) and, on AMX, in blocks of at most 64 columns (as
// torch's own callers pack it): b (K, N) float32, any strides -> (N / 64, K / 2, 64, 2) bfloat16, both rounded
// up, [n / 64][k / 2][n % 64][k % 2] = b[k][n], zeros past b.
constexpr int64_t kColumns = 64;
Tensor pack_vnni(const Tensor& b) {
  const int64_t K = b.size(0), N = b.size(1), K2 = (K + 1) / 2, blocks = (N + kColumns - 1) / kColumns;
  const Tensor padded = at::constant_pad_nd(b, {0, blocks * kColumns - N, 0, 2 * K2 - K});  // (2 K2, 64 blocks)
  return padded.view({K2, 2, blocks, kColumns}).permute({2, 0, 3, 1}).to(at::kBFloat16).contiguous();
}

// c (M rows, ldc apart) = [c +] a @ b: a M rows of K bfloat16 (K even), lda apart; b (K, N) packed by pack_vnni.
// One brgemm call per 64 columns; oneDNN generates a kernel per shape once per thread and keeps it.
void onednn_product(int64_t M, int64_t N, int64_t K, const bf16_t* a, int64_t lda, const Tensor& b, float* c,
                    int64_t ldc, bool add) {
#if defined(LSTM_TRAIN_ONEDNN)
  const auto* a_ = reinterpret_cast<const at::BFloat16*>(a);
  const at::BFloat16* b_ = b.data_ptr<at::BFloat16>();
  for (int64_t j = 0; j < N; j += kColumns) {
    at::native::cpublas::brgemm(M, std::min(kColumns, N - j), K, lda, kColumns, ldc, add, a_, b_ + j * K, c + j,
                                /*is_vnni=*/true);
  }
#else
  TORCH_CHECK(false, "lstm_train kernel: this torch has no oneDNN brgemm for bfloat16");
#endif
}

// After a thread's last onednn_product of a call: frees the AMX tiles' state (a no-op elsewhere).
void onednn_release() {
#if defined(LSTM_TRAIN_ONEDNN)
  at::native::cpublas::brgemm_release(true);
#endif
}

// Whether torch's oneDNN packs bfloat16 for AMX, i.e. this CPU has AMX and Linux lets the process use it.
bool onednn_amx() {
#if defined(LSTM_TRAIN_ONEDNN)
  return at::native::cpublas::could_pack(at::kBFloat16);
#else
  return false;
#endif
}

// forward_cells on pre-activations that oneDNN's products left in memory (rows of ldp floats from the block's row
// and gate 0): acc = bias + pre.
template <typename T, int R>
struct ForwardCellsFromPre {
  static void run(const float* pre, int64_t ldp, const T* bias, const T* c_prev, T* c, T* h, T* gates, int64_t H,
                  int64_t j, int64_t n, Variant<T> v) {
    if constexpr (std::is_same_v<T, float>) {
      const auto products = [&](Vectorized<T>(&acc)[R][4]) {
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q) {
            acc[r][q] = acc[r][q] + Lanes<float>::load(pre + r * ldp + q * H + j, n);
          }
        }
      };
      forward_cells<T, R>(products, bias, c_prev, c, h, gates, H, j, n, v);
    }
  }
};
#endif

// Whether oneDNN's brgemm computes bfloat16 products here: 2 on AMX (where torch's oneDNN packs for it), 1
// without AMX (oneDNN's AVX-512 kernels), 0 where it cannot (a build without bfloat16 products, a torch without
// the ukernel, a CPU without AVX-512), -1 if it runs but a small product in pack_vnni's layout comes out wrong (a
// layout this code does not know: then it is never used). The check's numbers are small integers, whose
// products and sums are exact.
int64_t onednn_bf16() {
#if defined(LSTM_TRAIN_BF16)
  try {
    // two blocks of columns (the second partial), AMX tiles of 16 rows and 32 bfloat16 of K, each with a tail
    const int64_t M = 19, K = 70, N = 70;
    const auto f = at::TensorOptions().dtype(at::kFloat);
    const auto grid = [&](int64_t rows, int64_t cols, int64_t p, int64_t q, int64_t mod) {  // (p i + q j) % mod - 2
      return (at::arange(rows, f).view({rows, 1}) * p + at::arange(cols, f).view({1, cols}) * q).remainder(mod) - 2;
    };
    const Tensor a = grid(M, K, 2, 3, 5).to(at::kBFloat16), b = grid(K, N, 5, 3, 7);  // rows k, k+1 differ
    Tensor c = at::ones({M, N}, f);
    onednn_product(M, N, K, bits(a), K, pack_vnni(b), c.data_ptr<float>(), N, /*add=*/true);
    onednn_release();
    if (!c.equal(a.to(at::kFloat).mm(b) + 1)) {
      return -1;
    }
    return onednn_amx() ? 2 : 1;
  } catch (const std::exception&) {  // c10::Error: no brgemm, or no VNNI layout; dnnl::error: oneDNN refuses
    return 0;
  }
#else
  return 0;
#endif
}

// The gate gradients of rows [0, rows) at one step. acts: gate activations (rows of 4H); c, c_prev: the step's
// cell state and the previous one; dh: dL/dh_t; dc: dL/dc_t from the later steps in, dL/dc_{t-1} out;
// d_pre: written, dL/d pre-activation (rows of 4H); dh_record (may be null): dh copied out.
// With zoneout, ``carry`` receives what dL/dh_{t-1} gets past the cell (z_h dL/dh_t, plus dhs_prev: dL/dh_{t-1}
// through the output, if not null). With peepholes, d_peep (rows of 3H) accumulates each row's share of their
// gradient: d i_pre c_{t-1}, d f_pre c_{t-1}, d o_pre c_t (the new c, before zoneout).
template <typename T>
void gate_gradients(const T* acts, const T* c, const T* c_prev, const T* dh, T* dc, T* d_pre, T* dh_record,
                    int64_t rows, int64_t H, const Variant<T>& v, const T* dhs_prev, T* carry, T* d_peep) {
  using L = Lanes<T>;
  using V = typename L::V;
  const V one(T(1)), zero(T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = acts + r * 4 * H;
    T* d = d_pre + r * 4 * H;
    for (int64_t j = 0; j < H; j += L::N) {
      const int64_t n = std::min(L::N, H - j);
      const int64_t k = r * H + j;
      const V i = L::load(a + j, n), f = L::load(a + H + j, n), g = L::load(a + 2 * H + j, n);
      const V o = L::load(a + 3 * H + j, n), cp = L::load(c_prev + k, n);
      const bool noaf = v.has(kNoOutputAct);
      const V dh_in = L::load(dh + k, n), dc_in = L::load(dc + k, n);  // of the state carried on (zoned out)
      V mc = zero, mh = zero;
      if (v.zone_c || v.zone_h) {
        zoneout_masks(v, r, j, mc, mh);
      }
      const V dh_t = v.zone_h ? (one - mh) * dh_in : dh_in;  // of the cell's own new h and c
      const V c_new = v.zone_c ? at::vec::fmadd(f, cp, i * g) : L::load(c + k, n);
      const V tc = noaf ? c_new : L::tanh(c_new);
      V dc_t = (v.zone_c ? (one - mc) * dc_in : dc_in) + dh_t * o * (noaf ? one : one - tc * tc);
      const V d_o = v.has(kNoOutputGate) ? zero : dh_t * tc * o * (one - o);
      if (v.peep != nullptr) {
        dc_t = at::vec::fmadd(L::load(v.peep + 2 * H + j, n), d_o, dc_t);
      }
      const V d_i = v.has(kNoInputGate) ? zero : dc_t * (v.has(kCoupled) ? g - cp : g) * i * (one - i);
      const V d_f = v.has(kNoForgetGate) || v.has(kCoupled) ? zero : dc_t * cp * f * (one - f);
      L::store(d_i, d + j, n);
      L::store(d_f, d + H + j, n);
      L::store(dc_t * i * (v.has(kNoInputAct) ? one : one - g * g), d + 2 * H + j, n);
      L::store(d_o, d + 3 * H + j, n);
      V dc_prev = v.zone_c ? at::vec::fmadd(mc, dc_in, dc_t * f) : dc_t * f;
      if (carry != nullptr) {
        L::store(dhs_prev == nullptr ? mh * dh_in : at::vec::fmadd(mh, dh_in, L::load(dhs_prev + k, n)), carry + k, n);
      }
      if (v.peep != nullptr) {
        dc_prev = at::vec::fmadd(L::load(v.peep + j, n), d_i, at::vec::fmadd(L::load(v.peep + H + j, n), d_f, dc_prev));
        T* dp = d_peep + r * 3 * H + j;
        L::store(at::vec::fmadd(d_i, cp, L::load(dp, n)), dp, n);
        L::store(at::vec::fmadd(d_f, cp, L::load(dp + H, n)), dp + H, n);
        L::store(at::vec::fmadd(d_o, c_new, L::load(dp + 2 * H, n)), dp + 2 * H, n);
      }
      L::store(dc_prev, dc + k, n);
      if (dh_record != nullptr) {
        L::store(dh_in, dh_record + k, n);
      }
    }
  }
}

// fn(R)(args...) for a block of rows < kRows: the kernels are instantiated for every block height.
template <typename T, template <typename, int> class Kernel, typename... Args>
void call_block(int rows, Args... args) {
  switch (rows) {
    case 1: Kernel<T, 1>::run(args...); break;
    case 2: Kernel<T, 2>::run(args...); break;
    case 3: Kernel<T, 3>::run(args...); break;
#if defined(CPU_CAPABILITY_AVX512)
    case 4: Kernel<T, 4>::run(args...); break;
    case 5: Kernel<T, 5>::run(args...); break;
    case 6: Kernel<T, 6>::run(args...); break;
#endif
    default: TORCH_CHECK(false, "lstm_train kernel: bad block height ", rows);
  }
}

template <typename T, int R>
struct ForwardBlock {
  static void run(const T* x, const T* bias, const T* w_ih, const T* w_hh, const T* h_prev, const T* c_prev, T* c,
                  T* h, T* gates, int64_t I, int64_t H, int64_t j, int64_t n, Variant<T> v) {
    forward_block<T, R>(x, bias, w_ih, w_hh, h_prev, c_prev, c, h, gates, I, H, j, n, v);
  }
};

template <typename T, int R>
struct BackwardBlock {
  static void run(const T* d_pre, const T* w, const T* init, T* dh_out, int64_t H, int64_t j, int64_t n,
                  const T* scale) {
    backward_block<T, R>(d_pre, w, init, dh_out, H, j, n, scale);
  }
};

// Rows [start, start + rows) of the batch: what one call of a kernel computes.
struct Block {
  int64_t start, rows;
};

// Splits the batch into blocks of at most `most` rows, as even as possible and a whole number per thread; each
// thread takes every threads-th block (so both keep work when padded rows drop out at the end of the batch)
// and runs fn(its blocks) over the whole sequence: the rows' recurrences are independent.
template <typename F>
void over_threads(int64_t B, int64_t work, const F& fn, int64_t most = kRows) {
  const int64_t threads = std::min<int64_t>({at::get_num_threads(), B, std::max<int64_t>(1, work / kParallelWork)});
  const int64_t per_thread = (B + most * threads - 1) / (most * threads);
  const int64_t count = std::min(B, per_thread * threads), base = B / count, extra = B % count;
  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t tid = begin; tid < end; ++tid) {
      std::vector<Block> blocks;
      for (int64_t k = tid; k < count; k += threads) {
        blocks.push_back({k * base + std::min(k, extra), base + (k < extra ? 1 : 0)});
      }
      fn(blocks);
    }
  };
  if (threads == 1) {
    run(0, 1);
  } else {
    at::parallel_for(0, threads, 1, run);
  }
}

void check_inputs(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh) {
  TORCH_CHECK(x.dim() == 3, "lstm_train kernel: x must be (T, B, I), got ", x.sizes());
  const int64_t B = x.size(1), H = w_hh.size(1);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 4 * H && w_ih.size(1) == x.size(2), "lstm_train kernel: w_ih ",
              w_ih.sizes(), " does not fit x ", x.sizes(), " and w_hh ", w_hh.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H, "lstm_train kernel: w_hh must be (4H, H), got ", w_hh.sizes());
  for (const Tensor* s : {&h0, &c0}) {
    TORCH_CHECK(s->dim() == 2 && s->size(0) == B && s->size(1) == H, "lstm_train kernel: states must be (B, H)");
  }
  for (const Tensor* t : {&x, &h0, &c0, &w_ih, &w_hh}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == x.scalar_type(),
                "lstm_train kernel: every tensor must be on the CPU with x's dtype");
  }
}

// The peepholes (3, H), contiguous, or undefined for none.
Tensor check_peep(const std::optional<Tensor>& peep, const Tensor& x, const Tensor& w_hh) {
  if (!peep.has_value() || !peep->defined()) {
    return Tensor();
  }
  TORCH_CHECK(peep->dim() == 2 && peep->size(0) == 3 && peep->size(1) == w_hh.size(1) && peep->device().is_cpu() &&
                  peep->scalar_type() == x.scalar_type(),
              "lstm_train kernel: peep must be (3, H) on the CPU with x's dtype, got ", peep->sizes());
  return peep->contiguous();
}

// Recurrent dropout's mask (B, H), contiguous, or undefined for none; not with bfloat16 products.
Tensor check_drop(const std::optional<Tensor>& drop, const Tensor& h0, bool bf16) {
  if (!drop.has_value() || !drop->defined()) {
    return Tensor();
  }
  TORCH_CHECK(!bf16, "lstm_train kernel: recurrent dropout takes float32 products");
  TORCH_CHECK(drop->sizes() == h0.sizes() && drop->device().is_cpu() && drop->scalar_type() == h0.scalar_type(),
              "lstm_train kernel: a recurrent dropout mask must be (B, H) as h0, got ", drop->sizes());
  return drop->contiguous();
}

// Zoneout's rates in [0, 1) and seed: none (at test) or two numbers (in training); -> its keys in training, else
// undefined.
Tensor check_zoneout(double c, double h, at::IntArrayRef seed, int64_t T, int64_t B, int64_t H) {
  TORCH_CHECK(c >= 0 && c < 1 && h >= 0 && h < 1, "lstm_train kernel: zoneout rates must be in [0, 1)");
  TORCH_CHECK(seed.empty() || seed.size() == 2, "lstm_train kernel: a zoneout seed is two numbers (or none, at test)");
  return seed.empty() || (c == 0 && h == 0) ? Tensor() : zoneout_keys(seed, T, B, H);
}

// A (4H, K) weight as the forward kernel reads it: one contiguous (K, 4, N) slice per vector of N hidden units,
// [j / N][k][q][j % N] = weight[q H + j][k], zero for j >= H.
template <typename T>
Tensor pack_forward(const Tensor& weight, int64_t H, int64_t N) {
  const int64_t K = weight.size(1), blocks = (H + N - 1) / N;
  const Tensor w = weight.contiguous();
  Tensor packed = at::zeros({blocks, K, 4, N}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = packed.data_ptr<T>();
  // rows of the weight in parallel: about 1 ms a call at hidden size 512
  at::parallel_for(0, 4 * H, std::max<int64_t>(1, (1 << 15) / K), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t q = row / H, j = row % H;
      T* out = dst + ((j / N) * K * 4 + q) * N + j % N;
      for (int64_t k = 0; k < K; ++k) {
        out[k * 4 * N] = src[row * K + k];
      }
    }
  });
  return packed;
}

// W_hh (4H, H) as the backward kernel reads it: one contiguous (4H, 4, N) slice per 4 vectors of hidden units,
// [j / 4N][k][j % 4N] = W_hh[k][j], zero for j >= H.
Tensor pack_backward(const Tensor& w_hh, int64_t N) {
  const int64_t H = w_hh.size(1), blocks = (H + 4 * N - 1) / (4 * N);
  Tensor padded = at::constant_pad_nd(w_hh, {0, blocks * 4 * N - H});  // (4H, blocks 4N)
  return padded.view({4 * H, blocks, 4 * N}).transpose(0, 1).contiguous();
}

// a @ b. MKL is slow when the product has few columns (4-6x for the 10 of a small input_size): then it computes
// (b^T a^T)^T, whose rows are few instead.
Tensor product(const Tensor& a, const Tensor& b) {
  return b.size(1) < 32 ? at::mm(b.t(), a.t()).t().contiguous() : at::mm(a, b);
}

// Rows that run at step t: all without padding, else batch_sizes[t] (non-increasing in t); 0 past the end.
inline int64_t running(at::IntArrayRef batch_sizes, int64_t t, int64_t T, int64_t B) {
  if (t >= T) {
    return 0;
  }
  return batch_sizes.empty() ? B : batch_sizes[t];
}

// products: kInputDtype, kKernelBf16 or kOnednnBf16 -> whether bfloat16.
bool check_products(int64_t products, const Tensor& x) {
  TORCH_CHECK(products >= kInputDtype && products <= kOnednnBf16, "lstm_train kernel: products must be 0, 1 or 2");
  const bool bf16 = products != kInputDtype;
#if defined(LSTM_TRAIN_BF16)
  TORCH_CHECK(!bf16 || x.scalar_type() == at::kFloat, "lstm_train kernel: bf16 products take float32 tensors");
#else
  TORCH_CHECK(!bf16, "lstm_train kernel: built without bf16 products (they need AVX512-BF16)");
#endif
  return bf16;
}

// -> (hs, h_n, c_n, gates, cs): hs (T, B, H), h_n and c_n each row's state at its last step; with keep (what
// the backward and return_gates need), also the gate activations (T, B, 4H) in (i, f, g, o) order and the cell
// states cs (T, B, H), else those two are undefined (None). products: kInputDtype, or bfloat16 ones (kKernelBf16,
// kOnednnBf16: float32 inputs; not in the few-rows path, which stays float32).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_in, const Tensor& h0_in, const Tensor& c0_in, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& bias_in, at::IntArrayRef batch_sizes, bool keep, int64_t products, int64_t flags,
    const std::optional<Tensor>& peep_in, double zoneout_c, double zoneout_h, at::IntArrayRef zoneout_seed,
    const std::optional<Tensor>& drop_in) {
  check_inputs(x_in, h0_in, c0_in, w_ih, w_hh);
  const bool bf16 = check_products(products, x_in);
  const Tensor peep = check_peep(peep_in, x_in, w_hh), drop = check_drop(drop_in, h0_in, bf16);
  const Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), G = 4 * H;
  const Tensor keys = check_zoneout(zoneout_c, zoneout_h, zoneout_seed, T, B, H);
  TORCH_CHECK(batch_sizes.empty() || static_cast<int64_t>(batch_sizes.size()) == T,
              "lstm_train kernel: batch_sizes must hold one size per step");
  const Tensor bias = bias_in.has_value() && bias_in->defined() ? bias_in->contiguous() : Tensor();
  Tensor hs = at::empty({T, B, H}, x.options());
  Tensor h_n = at::empty({B, H}, x.options()), c_n = at::empty({B, H}, x.options());
  // Without keep, the cell states of two steps are all the loop needs.
  Tensor gates = keep ? at::empty({T, B, G}, x.options()) : Tensor();
  Tensor cs = at::empty({keep ? T : std::min<int64_t>(T, 2), B, H}, x.options());

  // Few rows in all, or one step (decoding a token at a time, whatever the batch): packing the weights would cost
  // more than it saves (measured: 1.2-1.6x the time of ATen's GEMMs at T=1, batch 32-128), so ATen's GEMMs read
  // them as they are, into pre-activations, and a vectorised pass does the cell.
  const bool few = T * B <= kFewRows || T == 1;
  Tensor pre;
  if (few) {
    pre = keep ? gates : at::empty({T, B, G}, x.options());
    Tensor pre2 = pre.view({T * B, G});
    if (bias.defined()) {
      at::addmm_out(pre2, bias, x.view({T * B, I}), w_ih.t());
    } else {
      at::mm_out(pre2, x.view({T * B, I}), w_ih.t());
    }
  }

  const bool lowp = bf16 && !few, onednn = lowp && products == kOnednnBf16;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_train_forward", [&] {
    using T_ = scalar_t;
    constexpr int64_t N = Lanes<T_>::N;
    Tensor w_ih_packed, w_hh_packed;
#if defined(LSTM_TRAIN_BF16)
    // bfloat16 operands: x and the weights once, h as each step writes it (two steps' worth: rows only read
    // their own previous step)
    const int64_t Ip = I + (I & 1), Hp = H + (H & 1);
    Tensor x_bf, h_bf, w_ih_bf, w_hh_bf;
    if (lowp) {
      x_bf = even_bf16(x);
      h_bf = at::zeros({2, B, Hp}, x.options().dtype(at::kBFloat16));
      h_bf[1].narrow(1, 0, H).copy_(h0);
      w_ih_bf = onednn ? pack_vnni(w_ih.t()) : pack_bf16(w_ih, false);
      w_hh_bf = onednn ? pack_vnni(w_hh.t()) : pack_bf16(w_hh, false);
    }
#endif
    if (!few && !lowp) {
      w_ih_packed = pack_forward<T_>(w_ih, H, N);
      w_hh_packed = pack_forward<T_>(w_hh, H, N);
    }
    const T_* wi = w_ih_packed.defined() ? w_ih_packed.data_ptr<T_>() : nullptr;
    const T_* wh = w_hh_packed.defined() ? w_hh_packed.data_ptr<T_>() : nullptr;
    const T_* bias_p = bias.defined() ? bias.data_ptr<T_>() : nullptr;
    const T_* xp = x.data_ptr<T_>();
    Variant<T_> var{flags, peep.defined() ? peep.data_ptr<T_>() : nullptr,
                    drop.defined() ? drop.data_ptr<T_>() : nullptr};
    var.zoneout(zoneout_c, zoneout_h, keys, T * B);
    T_* g = keep ? gates.data_ptr<T_>() : nullptr;
    T_* hp = hs.data_ptr<T_>();
    T_* cp = cs.data_ptr<T_>();
    const int64_t c_steps = cs.size(0);
    // recurrent dropout: each step's h_{t-1} times the mask, once, for the products (each thread its own rows)
    Tensor h_drop = drop.defined() && !few ? at::empty({B, H}, x.options()) : Tensor();
    T_* hd = h_drop.defined() ? h_drop.data_ptr<T_>() : nullptr;
    over_threads(B, few ? 0 : T * B * G * (I + H), [&](const std::vector<Block>& blocks) {
      // oneDNN's products: a block's pre-activations of one step
      std::vector<float> pre_block(onednn ? kOnednnRows * G : 0);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t b = running(batch_sizes, t, T, B), ending = running(batch_sizes, t + 1, T, B);
        const T_* x_t = xp + t * B * I;
        const T_* h_prev = t == 0 ? h0.data_ptr<T_>() : hp + (t - 1) * B * H;
        const T_* c_prev = t == 0 ? c0.data_ptr<T_>() : cp + (t - 1) % c_steps * B * H;
        T_* g_t = keep ? g + t * B * G : nullptr;
        T_* h_t = hp + t * B * H;
        T_* c_t = cp + t % c_steps * B * H;
        if (few) {
          Tensor pre_t = pre[t].narrow(0, 0, b);
          const Tensor h_in = (t == 0 ? h0 : hs[t - 1]).narrow(0, 0, b);
          pre_t.addmm_(drop.defined() ? h_in * drop.narrow(0, 0, b) : h_in, w_hh.t());
          const T_* p = pre_t.data_ptr<T_>();
          for (int64_t row = 0; row < b; ++row) {
            for (int64_t j = 0; j < H; j += N) {
              const int64_t n = std::min(N, H - j), k = row * H + j;
              const T_* a = p + row * G + j;
              cell<T_>(Lanes<T_>::load(a, n), Lanes<T_>::load(a + H, n), Lanes<T_>::load(a + 2 * H, n),
                       Lanes<T_>::load(a + 3 * H, n), c_prev + k, c_t + k, h_t + k,
                       keep ? g_t + row * G + j : nullptr, H, n, var.shifted(t, 0, B, H, h_prev), j, row);
            }
          }
        }
        for (const Block& blk : blocks) {
          const int64_t end = hd == nullptr ? 0 : std::min(blk.start + blk.rows, b) * H;
          for (int64_t k = blk.start * H; k < end; ++k) {
            hd[k] = h_prev[k] * var.drop[k];
          }
        }
#if defined(LSTM_TRAIN_BF16)
        for (const Block& blk : blocks) {
          const int64_t r = blk.start, rows = std::min(blk.rows, b - r);
          if (!onednn || rows <= 0) {
            continue;
          }
          float* pre_p = pre_block.data();
          onednn_product(rows, G, Ip, bits(x_bf) + (t * B + r) * Ip, Ip, w_ih_bf, pre_p, G, false);
          onednn_product(rows, G, Hp, bits(h_bf) + ((t + 1) % 2 * B + r) * Hp, Hp, w_hh_bf, pre_p, G, true);
          for (int64_t s = 0; s < rows; s += kRows) {
            const int64_t rs = r + s, sub = std::min<int64_t>(kRows, rows - s);
            for (int64_t j = 0; j < H; j += N) {
              call_block<T_, ForwardCellsFromPre>(
                  static_cast<int>(sub), pre_p + s * G, G, bias_p, c_prev + rs * H, c_t + rs * H, h_t + rs * H,
                  keep ? g_t + rs * G : nullptr, H, j, std::min(N, H - j), var.shifted(t, rs, B, H, h_prev + rs * H));
            }
          }
          for (int64_t row = r; row < r + rows; ++row) {  // h as the next step's product reads it
            round_bf16<T_>(h_t + row * H, bits_mut(h_bf) + (t % 2 * B + row) * Hp, H);
          }
        }
#endif
        // a vector's weights stay in cache while each block uses them
        for (int64_t j = 0; j < (few || onednn ? 0 : H); j += N) {
          for (const Block& blk : blocks) {
            const int64_t r = blk.start, rows = std::min(blk.rows, b - r);
#if defined(LSTM_TRAIN_BF16)
            if (lowp && rows > 0) {
              const int64_t u = j / kLanes;
              call_block<T_, ForwardBlockBf16>(
                  static_cast<int>(rows), bits(x_bf) + (t * B + r) * Ip, bias_p, bits(w_ih_bf) + u * Ip * 4 * kLanes,
                  bits(w_hh_bf) + u * Hp * 4 * kLanes, bits(h_bf) + ((t + 1) % 2 * B + r) * Hp,
                  bits_mut(h_bf) + (t % 2 * B + r) * Hp, c_prev + r * H, c_t + r * H, h_t + r * H,
                  keep ? g_t + r * G : nullptr, Ip, Hp, H, j, std::min(N, H - j), var.shifted(t, r, B, H, h_prev + r * H));
              continue;
            }
#endif
            if (rows > 0) {
              call_block<T_, ForwardBlock>(static_cast<int>(rows), x_t + r * I, bias_p, wi + j * I * 4,
                                           wh + j * H * 4, (hd == nullptr ? h_prev : hd) + r * H, c_prev + r * H,
                                           c_t + r * H, h_t + r * H,
                                           keep ? g_t + r * G : nullptr, I, H, j, std::min(N, H - j),
                                           var.shifted(t, r, B, H, h_prev + r * H));
            }
          }
        }
        for (const Block& blk : blocks) {
          // rows [ending, b) take their last step here; rows past their length are zeros, as their outputs are
          const int64_t r = blk.start, end = r + blk.rows;
          for (int64_t row = std::max(r, ending); row < std::min(end, b); ++row) {
            std::memcpy(h_n.data_ptr<T_>() + row * H, h_t + row * H, H * sizeof(T_));
            std::memcpy(c_n.data_ptr<T_>() + row * H, c_t + row * H, H * sizeof(T_));
          }
          const int64_t lo = std::max(r, b);
          if (lo < end) {
            std::memset(h_t + lo * H, 0, (end - lo) * H * sizeof(T_));
            if (keep) {
              std::memset(g_t + lo * G, 0, (end - lo) * G * sizeof(T_));
              std::memset(c_t + lo * H, 0, (end - lo) * H * sizeof(T_));
            }
          }
        }
      }
#if defined(LSTM_TRAIN_BF16)
      if (onednn) {
        onednn_release();
      }
#endif
    }, onednn ? kOnednnRows : kRows);
  });
  return {hs, h_n, c_n, gates, keep ? cs : Tensor()};
}

// -> (d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, dh_steps); d_x, d_w_ih, d_bias undefined unless asked for,
// dh_steps (T, B, H) dL/dh_t of every step (zero past lengths) only if record_dh. products: as the forward's (the
// gate gradients rounded to bfloat16 for bfloat16 ones).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& x_in, const Tensor& w_ih, const Tensor& w_hh, const Tensor& h0_in, const Tensor& c0_in,
    const Tensor& gates, const Tensor& hs, const Tensor& cs, const std::optional<Tensor>& d_hs_in,
    const std::optional<Tensor>& d_hn_in, const std::optional<Tensor>& d_cn_in, at::IntArrayRef batch_sizes,
    bool need_x, bool need_w_ih, bool need_bias, bool record_dh, int64_t products, int64_t flags,
    const std::optional<Tensor>& peep_in, double zoneout_c, double zoneout_h, at::IntArrayRef zoneout_seed,
    const std::optional<Tensor>& drop_in) {
  check_inputs(x_in, h0_in, c0_in, w_ih, w_hh);
  const bool bf16 = check_products(products, x_in), onednn = products == kOnednnBf16;
  const Tensor peep = check_peep(peep_in, x_in, w_hh), drop = check_drop(drop_in, h0_in, bf16);
  const Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), G = 4 * H;
  const Tensor keys = check_zoneout(zoneout_c, zoneout_h, zoneout_seed, T, B, H);
  TORCH_CHECK(gates.is_contiguous() && hs.is_contiguous() && cs.is_contiguous() && gates.size(0) == T,
              "lstm_train kernel: pass the forward's own gates, hs and cs");
  const auto given = [](const std::optional<Tensor>& t) { return t.has_value() && t->defined(); };
  const Tensor d_hs = given(d_hs_in) ? d_hs_in->contiguous() : Tensor();
  const Tensor d_hn = given(d_hn_in) ? d_hn_in->contiguous() : Tensor();

  Tensor d_pre = at::empty({T, B, G}, x.options());
  Tensor dh = at::empty({B, H}, x.options());  // dL/dh_t, ends as dL/dh0
  Tensor dc = given(d_cn_in) ? d_cn_in->contiguous().clone() : at::zeros({B, H}, x.options());
  Tensor dh_steps = record_dh ? at::zeros({T, B, H}, x.options()) : Tensor();
  Tensor d_pre_bf;  // bf16: the gate gradients as bfloat16, for the products
  // the peepholes' gradient, each row's sum over its steps (each row is one thread's), summed over rows at the end
  Tensor d_peep_rows = peep.defined() ? at::zeros({B, 3 * H}, x.options()) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_train_backward", [&] {
    using T_ = scalar_t;
    constexpr int64_t N = Lanes<T_>::N;
#if defined(LSTM_TRAIN_BF16)
    Tensor w_bf;  // W_hh packed for d_pre @ W_hh
    if (bf16) {
      w_bf = onednn ? pack_vnni(w_hh) : pack_bf16(w_hh, true);
      d_pre_bf = at::empty({T, B, G}, x.options().dtype(at::kBFloat16));
    }
#endif
    const Tensor w_packed = bf16 ? Tensor() : pack_backward(w_hh, N);
    const T_* a = gates.data_ptr<T_>();
    const T_* cp = cs.data_ptr<T_>();
    Variant<T_> var{flags, peep.defined() ? peep.data_ptr<T_>() : nullptr,
                    drop.defined() ? drop.data_ptr<T_>() : nullptr};
    var.zoneout(zoneout_c, zoneout_h, keys, T * B);
    T_* peep_rows = peep.defined() ? d_peep_rows.data_ptr<T_>() : nullptr;
    Tensor carry = var.zone_h ? at::zeros({B, H}, x.options()) : Tensor();  // dL/dh_{t-1} past the cell
    T_* carry_p = carry.defined() ? carry.data_ptr<T_>() : nullptr;
    const T_* w = bf16 ? nullptr : w_packed.data_ptr<T_>();
    const T_* dhs = d_hs.defined() ? d_hs.data_ptr<T_>() : nullptr;
    const T_* dhn = d_hn.defined() ? d_hn.data_ptr<T_>() : nullptr;
    T_* dp = d_pre.data_ptr<T_>();
    T_* dh_p = dh.data_ptr<T_>();
    T_* dc_p = dc.data_ptr<T_>();
    T_* rec = record_dh ? dh_steps.data_ptr<T_>() : nullptr;
    over_threads(B, T * B * G * H, [&](const std::vector<Block>& blocks) {
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t b = running(batch_sizes, t, T, B);
        const int64_t starting = running(batch_sizes, t + 1, T, B);  // rows [starting, b) have their last step here
        for (const Block& blk : blocks) {
          const int64_t hi = std::min(blk.start + blk.rows, b);
          for (int64_t row = std::max(blk.start, starting); row < hi; ++row) {  // dh enters from the output and h_n
            T_* out = dh_p + row * H;
            for (int64_t k = 0; k < H; ++k) {
              out[k] = (dhs == nullptr ? T_(0) : dhs[(t * B + row) * H + k]) + (dhn == nullptr ? T_(0) : dhn[row * H + k]);
            }
          }
        }
        const T_* a_t = a + t * B * G;
        const T_* c_t = cp + t * B * H;
        const T_* c_prev = t == 0 ? c0.data_ptr<T_>() : cp + (t - 1) * B * H;
        T_* dp_t = dp + t * B * G;
        for (const Block& blk : blocks) {
          const int64_t r = blk.start, rows = std::max<int64_t>(0, std::min(blk.rows, b - r));
          const T_* dhs_prev = (t == 0 || dhs == nullptr) ? nullptr : dhs + ((t - 1) * B + r) * H;
          gate_gradients<T_>(a_t + r * G, c_t + r * H, c_prev + r * H, dh_p + r * H, dc_p + r * H, dp_t + r * G,
                             rec == nullptr ? nullptr : rec + (t * B + r) * H, rows, H, var.shifted(t, r, B, H, nullptr),
                             dhs_prev, carry_p == nullptr ? nullptr : carry_p + r * H,
                             peep_rows == nullptr ? nullptr : peep_rows + r * 3 * H);
          const int64_t lo = std::max(r, b), hi = r + blk.rows;
          if (lo < hi) {
            std::memset(dp_t + lo * G, 0, (hi - lo) * G * sizeof(T_));
          }
#if defined(LSTM_TRAIN_BF16)
          if (bf16) {
            // the whole block, zeros past the lengths included: the weight-gradient GEMMs read every row
            round_bf16<T_>(dp_t + r * G, bits_mut(d_pre_bf) + (t * B + r) * G, blk.rows * G);
          }
#endif
        }
        // dL/dh_{t-1}: through the output, plus W_hh^T d_pre_t through step t (at t = 0: dL/dh0)
        const T_* init = carry_p != nullptr ? carry_p : (t == 0 || dhs == nullptr) ? nullptr : dhs + (t - 1) * B * H;
#if defined(LSTM_TRAIN_BF16)
        for (const Block& blk : blocks) {
          const int64_t r = blk.start, rows = std::min(blk.rows, b - r);
          if (!onednn || rows <= 0) {
            continue;
          }
          if (init != nullptr) {
            std::memcpy(dh_p + r * H, init + r * H, rows * H * sizeof(T_));
          }
          onednn_product(rows, H, G, bits(d_pre_bf) + (t * B + r) * G, G, w_bf, reinterpret_cast<float*>(dh_p + r * H),
                         H, init != nullptr);
        }
#endif
        // 4 vectors' weights stay in cache while each block uses them
        for (int64_t j = 0; j < (onednn ? 0 : H); j += 4 * N) {
          for (const Block& blk : blocks) {
            const int64_t r = blk.start, rows = std::min(blk.rows, b - r);
#if defined(LSTM_TRAIN_BF16)
            if (bf16 && rows > 0) {
              call_block<T_, BackwardBlockBf16>(static_cast<int>(rows), bits(d_pre_bf) + (t * B + r) * G,
                                                bits(w_bf) + j / (4 * kLanes) * G * 4 * kLanes,
                                                init == nullptr ? nullptr : init + r * H, dh_p + r * H, H, j,
                                                std::min(4 * N, H - j));
              continue;
            }
#endif
            if (rows > 0) {
              call_block<T_, BackwardBlock>(static_cast<int>(rows), dp_t + r * G, w + j * G,
                                            init == nullptr ? nullptr : init + r * H, dh_p + r * H, H, j,
                                            std::min(4 * N, H - j), var.drop == nullptr ? nullptr : var.drop + r * H);
            }
          }
        }
      }
#if defined(LSTM_TRAIN_BF16)
      if (onednn) {
        onednn_release();
      }
#endif
    }, onednn ? kOnednnRows : kRows);
  });

  // Everything outside the recurrence, for all steps at once: one GEMM each (and the peepholes' sum over rows).
  const Tensor d_pre2 = d_pre.view({T * B, G});
  const Tensor d_peep = peep.defined() ? d_peep_rows.sum(0).view({3, H}) : Tensor();
#if defined(LSTM_TRAIN_BF16)
  if (bf16) {  // the same GEMMs on bfloat16 operands (float32 accumulation, bfloat16 results: as autocast's)
    const auto bf = [](const Tensor& t) { return t.to(at::kBFloat16); };
    const Tensor d = d_pre_bf.view({T * B, G});
    Tensor h_prev = at::empty({T, B, H}, d.options());  // h_{t-1} of every step
    h_prev[0].copy_(h0);
    h_prev.narrow(0, 1, T - 1).copy_(hs.narrow(0, 0, T - 1));
    Tensor d_w_hh = at::mm(d.t(), h_prev.view({T * B, H})).to(at::kFloat);
    Tensor d_x = need_x ? at::mm(d, bf(w_ih)).to(at::kFloat).view({T, B, I}) : Tensor();
    Tensor d_w_ih = need_w_ih ? at::mm(d.t(), bf(x).view({T * B, I})).to(at::kFloat) : Tensor();
    Tensor d_bias = need_bias ? d_pre2.sum(0) : Tensor();
    return {d_x, dh, dc, d_w_ih, d_w_hh, d_bias, dh_steps, d_peep};
  }
#endif
  // d W_hh = sum over t of d_pre_t^T h_{t-1}, computed transposed (h_{t-1}^T d_pre_t): measured 5-10% faster. With
  // recurrent dropout, h_{t-1} as the product read it: times the mask.
  Tensor d_w_hh_t = at::mm((drop.defined() ? h0 * drop : h0).t(), d_pre[0]);
  if (T > 1) {
    const Tensor h_prev = drop.defined() ? hs.narrow(0, 0, T - 1) * drop : hs.narrow(0, 0, T - 1);
    d_w_hh_t.addmm_(h_prev.reshape({-1, H}).t(), d_pre.narrow(0, 1, T - 1).reshape({-1, G}));
  }
  Tensor d_x = need_x ? product(d_pre2, w_ih).view({T, B, I}) : Tensor();
  Tensor d_w_ih = need_w_ih ? product(d_pre2.t(), x.view({T * B, I})) : Tensor();
  Tensor d_bias = need_bias ? d_pre2.sum(0) : Tensor();
  const Tensor d_w_hh = d_w_hh_t.t().contiguous();
  return {d_x, dh, dc, d_w_ih, d_w_hh, d_bias, dh_steps, d_peep};
}

}  // namespace

TORCH_LIBRARY(lstm_train, m) {
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, int[] batch_sizes, "
      "bool keep, int products, int flags, Tensor? peep, float zoneout_c, float zoneout_h, int[] zoneout_seed, "
      "Tensor? drop) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_backward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor h0, Tensor c0, Tensor gates, Tensor hs, Tensor cs, "
      "Tensor? d_hs, Tensor? d_hn, Tensor? d_cn, int[] batch_sizes, bool need_x, bool need_w_ih, bool need_bias, "
      "bool record_dh, int products, int flags, Tensor? peep, float zoneout_c, float zoneout_h, int[] zoneout_seed, "
      "Tensor? drop) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("onednn_bf16() -> int", &onednn_bf16);
}

TORCH_LIBRARY_IMPL(lstm_train, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}
