// OScaR INT2 KV-cache kernels: fused rotate / token-norm / quantize / pack, and packed decode attention.
//
// This file holds plain CUDA (no torch headers) so that it can be compiled and inspected with nvcc alone
// (`nvcc -Xptxas -v -c`). The torch binding is csrc/oscar_bindings.cpp; the Python side, the layout
// converters and the pure-PyTorch fallbacks are in oscar_core/kernels/.
//
// Every kernel is a template on the head dim D (64, 128 or 256; the host launchers dispatch at run time).
// Layout (groups of 32 tokens). One 12*D-byte block per (sequence, kv head, group), 1536 bytes for D = 128:
//   keys  : [0, 8D)      2-bit codes of the 32xD (token x channel) tile in mma.m16n8k16 A-fragment order
//           [8D, 10D)    fp16 scale per channel, [10D, 12D) fp16 1024 + integer zero point per channel
//   values: [0, 8D)      2-bit codes of the Dx32 (channel x token) tile in A-fragment order
//           [8D, 10D)    fp16 scale [D/32 channel groups][32 tokens], [10D, 12D) fp16 1024 + zero, same order
// (1024 + z is exact in fp16: the scale floor keeps |z| <= 1024.)
//   token norms: fp32 [N, T] (one per token, shared by all kv heads).
// Fragment order (see oscar_core/kernels/layout.py for the same map in Python): for a tile with `row`
// and `col` (keys: row = token, col = channel; values: row = channel, col = token), let
//   rt = row / 16, r = row % 16, ct = col / 16, c = col % 16 and
//   lane = (r % 8) * 4 + (c % 8) / 2, reg = (r / 8) + 2 * (c / 8), half = c % 2.
// Keys: word = ct, field = rt * 4 + reg. Values: word = rt, field = ct * 4 + reg.
// Bit position inside the 32-bit word = half * 16 + 2 * field; the word lives at byte offset
//   ((word / 4) * 32 + lane) * 16 + (word % 4) * 4,
// so that lane l reads its D/16 words with D/64 16-byte loads, each warp-wide load contiguous.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include <type_traits>

// Keys subtract 1024 + zero per fp16 operand pair (HSUB2, the default, measured 6% faster at 128K); with
// OSCAR_K_HSUB=0 they use one extra bias MMA per k-tile instead (A rows = 1024 + zero).
#ifndef OSCAR_K_HSUB
#define OSCAR_K_HSUB 1
#endif

namespace oscar {

constexpr int kGT = 32;       // tokens per key group / per packed block
constexpr int kNW = 4;        // warps per decode CTA
constexpr int kStages = 3;    // cp.async stages per warp
constexpr float kNegBig = -1e30f;

// Sizes that follow from the head dim D.
template <int D>
struct Dims {
  static_assert(D == 64 || D == 128 || D == 256, "head dim must be 64, 128 or 256");
  static constexpr int kBlk = 12 * D;        // bytes per (head, group) block: 1536 for D = 128
  static constexpr int kScaleOff = 8 * D;    // after the codes
  static constexpr int kZeroOff = 10 * D;
  static constexpr int kE = D / 32;          // channels per lane when a warp holds one row
  static constexpr int kTiles = D / 16;      // 16-channel tiles = packed words per lane
  static constexpr int kGroups = D / 32;     // per-token channel groups of the values
  static constexpr int kStageBytes = 2 * kBlk + kGT * 4;  // keys + values + 32 norms (3200 for D = 128)
  static constexpr int kStageChunks = kStageBytes / 16;
  // 1/sqrt(D) as torch rounds it to fp32 (a power of two for 64 and 256)
  static constexpr float kInvSqrt = D == 64 ? 0.125f : D == 128 ? 0.08838834764831845f : 0.0625f;
};

template <typename T>
struct Cvt;
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_f(float x) { return __float2half_rn(x); }
};

// E 16-bit elements as one vector load/store (E = 2, 4, 8).
template <int Bytes>
struct VecOf;
template <>
struct VecOf<4> {
  using type = uint32_t;
};
template <>
struct VecOf<8> {
  using type = uint2;
};
template <>
struct VecOf<16> {
  using type = uint4;
};
template <int E>
using Vec16 = typename VecOf<2 * E>::type;

// E floats to memory with float2 / float4 stores.
template <int E>
__device__ __forceinline__ void store_f(float* dst, const float (&v)[E]) {
  if constexpr (E == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int i = 0; i < E; i += 4) *reinterpret_cast<float4*>(dst + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
  }
}

// Unnormalized 32E-point Walsh-Hadamard transform of one row held by a warp, lane = channels E lane .. +E-1,
// in the reference's butterfly order (oscar_core/hadamard.py: stages 1 .. E/2 in registers, E .. 16E across
// lanes; (a + b, a - b) with a the lower index), so that fp32 results are bit-identical.
template <int E>
__device__ __forceinline__ void fwht_warp(float (&x)[E], int lane) {
  if constexpr (E == 4) {  // written out: the instruction order of the tuned D = 128 decode prologue
    const float y0 = x[0] + x[1], y1 = x[0] - x[1], y2 = x[2] + x[3], y3 = x[2] - x[3];
    x[0] = y0 + y2;
    x[1] = y1 + y3;
    x[2] = y0 - y2;
    x[3] = y1 - y3;
  } else {
#pragma unroll
    for (int hh = 1; hh < E; hh <<= 1) {
#pragma unroll
      for (int i = 0; i < E; ++i) {
        if (!(i & hh)) {
          const float a = x[i], b = x[i + hh];
          x[i] = a + b;
          x[i + hh] = a - b;
        }
      }
    }
  }
#pragma unroll
  for (int m = 1; m <= 16; m <<= 1) {
    const bool upper = (lane & m) != 0;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const float p = __shfl_xor_sync(0xffffffffu, x[i], m);
      x[i] = upper ? (p - x[i]) : (x[i] + p);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The one quantizer (integer zero point, 2 bits), bit-for-bit as oscar_core/quant.py.
// ------------------------------------------------------------------------------------------------
struct QParams {
  float s;   // fp32 value of the stored fp16 scale
  float rs;  // RN(1 / s)
  float z;   // fp32 value of the stored fp16 zero point
  __half s16, z16;
};

// The IEEE division, out of line: its slow path inlined at every call site made the pack kernels'
// code large enough to be instruction-fetch bound (~30 us for a single CTA).
__device__ __noinline__ float fdiv_rn_call(float a, float b) { return __fdiv_rn(a, b); }

// a / b correctly rounded, given rb = RN(1/b), for b > 0 normal and a quotient that is not subnormal:
// Markstein's theorem (q0 = a * rb is faithful; the FMA residual is exact; one correction rounds right).
// copysign keeps the sign of a zero quotient.
__device__ __forceinline__ float div_rn(float a, float b, float rb) {
  const float q0 = a * rb;
  const float r = fmaf(-q0, b, a);
  return copysignf(fmaf(r, rb, q0), a);
}

__device__ __forceinline__ QParams int_zero_params(float mx, float mn) {
  float scale = fdiv_rn_call(mx - mn, 3.0f);
  float mag = fmaxf(fabsf(mx), fabsf(mn));
  scale = fmaxf(scale, mag * 0.0009765625f);
  if (!(scale > 0.f)) scale = 1.f;
  __half s16 = __float2half_rn(fminf(scale, 65504.f));
  float s = __half2float(s16);
  if (!(s > 0.f)) {
    s = 1.f;
    s16 = __float2half_rn(1.f);
  }
  float z = rintf(fdiv_rn_call(-mn, s));
  z = fminf(fmaxf(z, -65504.f), 65504.f);
  QParams p;
  p.s = s;
  p.rs = __frcp_rn(s);
  p.s16 = s16;
  p.z16 = __float2half_rn(z);
  p.z = __half2float(p.z16);
  return p;
}

// round(x / s) + z clamped to [0, 3]; x / s is within 1024 in magnitude (the scale floor), and a tiny
// quotient rounds to 0 whichever way its last bit goes, so div_rn is exact for the code.
__device__ __forceinline__ uint32_t int_zero_code(float x, const QParams& p) {
  float q = rintf(div_rn(x, p.s, p.rs)) + p.z;
  q = fminf(fmaxf(q, 0.f), 3.f);
  return static_cast<uint32_t>(q);
}

// Position (in fp16 units) of one metadata value inside its D-entry array: thread t4 of the decode kernel
// finds its D/8 pairs j = 0 .. D/8-1 at pair index (j/4*4 + t4)*4 + j%4 (D/32 16-byte loads, conflict-free).
// keys: `idx` = channel, j = kt*2 + hi; values: `idx` = token, j = grp*4 + mt*2 + hi.
__device__ __forceinline__ int meta_pos(int idx, int grp, bool keys) {
  const int e = idx & 1, t4 = (idx >> 1) & 3, hi = (idx >> 3) & 1, blk16 = idx >> 4;
  const int j = keys ? blk16 * 2 + hi : grp * 4 + blk16 * 2 + hi;
  return 2 * (((j >> 2) * 4 + t4) * 4 + (j & 3)) + e;
}

// Assemble the 2D packed words of one value tile (codes in smem as [token][channel] bytes; the fragment
// tile's rows are channels, its columns tokens) and store them.
template <int D>
__device__ __forceinline__ void store_value_words(const uint8_t* codes_tc, uint8_t* dst_block, int tid,
                                                  int nthreads) {
  for (int wi = tid; wi < 2 * D; wi += nthreads) {
    const int lane = (wi >> 2) & 31;
    const int word = (wi >> 7) * 4 + (wi & 3);  // the 16-channel row tile
    const int g = lane >> 2, tq = lane & 3;
    uint32_t w = 0;
#pragma unroll
    for (int f = 0; f < 8; ++f) {
      const int reg = f & 3, ct = f >> 2;  // field = token tile * 4 + fragment register
      const int rowhi = reg & 1, colhi = reg >> 1;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = word * 16 + rowhi * 8 + g;         // channel
        const int col = ct * 16 + colhi * 8 + tq * 2 + h;  // token
        w |= static_cast<uint32_t>(codes_tc[col * D + row]) << (h * 16 + 2 * f);
      }
    }
    reinterpret_cast<uint32_t*>(dst_block)[wi] = w;
  }
}

__device__ __forceinline__ void cp_async16(void* smem_ptr, const void* gmem_ptr) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem_ptr));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem_ptr));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}


// ------------------------------------------------------------------------------------------------
// Pack keys: grid (T/32, N), 128 threads (4 warps), dynamic smem pack_keys_smem<D>(H). One CTA quantizes one
// 32-token group of every kv head (the token norm spans all heads).
//  1. cp.async of every head's 32xD tile into padded smem rows (D + 8 elements: conflict-free 16-byte
//     accesses).
//  2. Warp w rotates heads w, w+4, ...: the FWHT in the reference's butterfly order (stages 1..D/2,
//     (a+b, a-b)) in fp32, times 1/sqrt(D), rounded to the input dtype as the reference's rotation returns
//     it, written back in place (rotate = 0: the keys are already rotated, as the cache holds them); per-head
//     sums of squares in token_norms' order (channel by channel, s = s + x*x, every step rounded).
//     D <= 128: lane = token, the D channels in registers. D = 256 (256 floats do not fit in registers):
//     one row at a time across the warp (lane = 8 channels, fwht_warp), then lane = token for the sums.
//  3. fp32 token norm over all heads (head by head; 0 counts as 1) and its correctly rounded reciprocal.
//  4. Warp w quantizes 128-channel slices w, w+4, ...: lane = 4 channels x 32 tokens (per-channel groups are
//     lane-local): x = rotated / norm and round(x / s), both correctly rounded divisions (div_rn: q = a *
//     rcp(b), one FMA residual correction), the integer-zero-point parameters of quant.py, codes assembled
//     into the fragment-order words in registers (one shuffle joins the two lanes that share a word).
//     A slice is one head (D = 128), half a head (D = 256) or two heads, 16 lanes each (D = 64).
// ------------------------------------------------------------------------------------------------
template <int D>
struct PackKeysCfg {
  static constexpr int kRow = D + 8;                    // elements per padded smem row
  static constexpr int kMaxHeads = 2048 / D;            // smem bound: 32, 16, 8 kv heads (~140 KB)
  static constexpr int kLanesPerHead = D < 128 ? D / 4 : 32;  // lanes sharing one head in a slice
  static constexpr int kHeadsPerSlice = 32 / kLanesPerHead;   // 2 for D = 64
  static constexpr int kSlicesPerHead = D > 128 ? D / 128 : 1;  // 2 for D = 256
};

template <int D>
__host__ __device__ constexpr size_t pack_keys_smem(int H, size_t elem) {
  return static_cast<size_t>(H) * kGT * PackKeysCfg<D>::kRow * elem + static_cast<size_t>(H) * kGT * 4 + 2 * kGT * 4;
}

template <typename T, int D>
__global__ void __launch_bounds__(128, 3) pack_keys_kernel(const T* __restrict__ k, uint8_t* __restrict__ out,
                                                            float* __restrict__ norms, int H, int Tn, int G,
                                                            int rotate) {
  using C = PackKeysCfg<D>;
  constexpr int kPackRow = C::kRow;
  constexpr int kBlk = Dims<D>::kBlk;
  constexpr float kInvSqrtD = Dims<D>::kInvSqrt;
  extern __shared__ __align__(16) uint8_t smem[];
  T* rot = reinterpret_cast<T*>(smem);  // [H][32][kPackRow]
  float* ssq = reinterpret_cast<float*>(smem + static_cast<size_t>(H) * kGT * kPackRow * sizeof(T));  // [H][32]
  float* nrm = ssq + H * kGT;  // [32]
  float* rcp = nrm + kGT;      // [32]
  const int gi = blockIdx.x, n = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int kChunks = kGT * D * static_cast<int>(sizeof(T)) / 16;  // 16-byte chunks per head tile
  constexpr int kRowChunks = D * static_cast<int>(sizeof(T)) / 16;     // per token row

  // 1. all of this warp's heads in flight at once
  for (int h = warp; h < H; h += 4) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(k + ((static_cast<size_t>(n) * H + h) * Tn + gi * kGT) * D);
    uint8_t* dst = reinterpret_cast<uint8_t*>(rot + static_cast<size_t>(h) * kGT * kPackRow);
#pragma unroll 4
    for (int c = lane; c < kChunks; c += 32)
      cp_async16(dst + (c / kRowChunks) * kPackRow * sizeof(T) + (c % kRowChunks) * 16, src + c * 16);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();

  // 2. rotate
  if constexpr (D <= 128) {
    for (int h = warp; h < H; h += 4) {
      T* row = rot + (static_cast<size_t>(h) * kGT + lane) * kPackRow;
      float x[D];
#pragma unroll
      for (int j = 0; j < kRowChunks; ++j) {
        const uint4 raw = reinterpret_cast<const uint4*>(row)[j];
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; ++i) x[j * 8 + i] = Cvt<T>::to_f(e[i]);
      }
      if (rotate) {
#pragma unroll
        for (int hh = 1; hh < D; hh <<= 1) {
#pragma unroll
          for (int i = 0; i < D; ++i) {
            if (!(i & hh)) {
              const float a = x[i], b = x[i + hh];
              x[i] = a + b;
              x[i + hh] = a - b;
            }
          }
        }
#pragma unroll
        for (int j = 0; j < kRowChunks; ++j) {
          uint4 raw;
          T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            e[i] = Cvt<T>::from_f(x[j * 8 + i] * kInvSqrtD);
            x[j * 8 + i] = Cvt<T>::to_f(e[i]);
          }
          reinterpret_cast<uint4*>(row)[j] = raw;
        }
      }
      float ss = __fmul_rn(x[0], x[0]);  // token_norms' order; _rn: no FMA contraction
#pragma unroll
      for (int i = 1; i < D; ++i) ss = __fadd_rn(ss, __fmul_rn(x[i], x[i]));
      ssq[h * kGT + lane] = ss;
    }
  } else {
    for (int h = warp; h < H; h += 4) {
      T* tile = rot + static_cast<size_t>(h) * kGT * kPackRow;
      if (rotate) {
#pragma unroll 2
        for (int t = 0; t < kGT; ++t) {  // row t: lane = channels 8 lane .. 8 lane + 7
          uint4* p = reinterpret_cast<uint4*>(tile + t * kPackRow) + lane;
          uint4 raw = *p;
          T* e = reinterpret_cast<T*>(&raw);
          float x[8];
#pragma unroll
          for (int i = 0; i < 8; ++i) x[i] = Cvt<T>::to_f(e[i]);
          fwht_warp<8>(x, lane);
#pragma unroll
          for (int i = 0; i < 8; ++i) e[i] = Cvt<T>::from_f(x[i] * kInvSqrtD);
          *p = raw;
        }
        __syncwarp();
      }
      const uint4* row = reinterpret_cast<const uint4*>(tile + lane * kPackRow);  // lane = token
      float ss = 0.f;  // 0 + x0*x0 == x0*x0 exactly: the same sum as the D <= 128 branch
#pragma unroll 4
      for (int j = 0; j < kRowChunks; ++j) {
        const uint4 raw = row[j];
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float x = Cvt<T>::to_f(e[i]);
          ss = __fadd_rn(ss, __fmul_rn(x, x));
        }
      }
      ssq[h * kGT + lane] = ss;
    }
  }
  __syncthreads();

  // 3. token norms
  if (warp == 0) {
    float s = ssq[lane];
    for (int h = 1; h < H; ++h) s = __fadd_rn(s, ssq[h * kGT + lane]);
    float nv = sqrtf(s);
    nv = nv > 0.f ? nv : 1.f;
    nrm[lane] = nv;
    rcp[lane] = __frcp_rn(nv);
    norms[static_cast<size_t>(n) * Tn + gi * kGT + lane] = nv;
  }
  __syncthreads();

  // 4. quantize and pack; lane = channels c0 .. c0 + 3 of head h
  const int sub = C::kHeadsPerSlice > 1 ? lane / C::kLanesPerHead : 0;  // which head of a two-head slice
  const int hl = C::kHeadsPerSlice > 1 ? lane % C::kLanesPerHead : lane;
  const int chi = (hl >> 1) & 1;       // which 8-channel half of its 16-channel tile
  const int t4w = 2 * (hl & 1) + chi;  // the fragment column (t4) of the words this lane writes
  const int slices = (H * C::kSlicesPerHead + C::kHeadsPerSlice - 1) / C::kHeadsPerSlice;
  for (int it = warp; it < slices; it += 4) {
    const int h = C::kHeadsPerSlice > 1 ? it * C::kHeadsPerSlice + sub : it / C::kSlicesPerHead;
    const int c0 = (C::kSlicesPerHead > 1 ? (it % C::kSlicesPerHead) * 128 : 0) + 4 * hl;
    const int ct = c0 >> 4;  // the 16-channel tile = the word index
    // D = 64 with odd H: the second half-warp of the last slice has no head; it reads head H-1 (the
    // shuffles need every lane) and writes nothing
    const bool live = C::kHeadsPerSlice == 1 || h < H;
    const int hr = live ? h : H - 1;
    const T* tile = rot + static_cast<size_t>(hr) * kGT * kPackRow + c0;
    float x[kGT][4];  // x = rotated / norm, token t, channel c0 + j
    float mx[4], mn[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      mx[j] = -INFINITY;
      mn[j] = INFINITY;
    }
#pragma unroll
    for (int t = 0; t < kGT; ++t) {
      const uint2 raw = *reinterpret_cast<const uint2*>(tile + t * kPackRow);
      const T* e = reinterpret_cast<const T*>(&raw);
      const float nv = nrm[t], rn = rcp[t];
      float a[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        a[j] = Cvt<T>::to_f(e[j]);
        x[t][j] = div_rn(a[j], nv, rn);
      }
      // a tiny nonzero |a| could give a subnormal quotient, where the Markstein step may be off by an
      // ulp: those (practically never taken) take the IEEE division; one branch per token
      const float amin = fminf(fminf(fabsf(a[0]), fabsf(a[1])), fminf(fabsf(a[2]), fabsf(a[3])));
      if (amin < 1e-30f) {
#pragma unroll
        for (int j = 0; j < 4; ++j) x[t][j] = fdiv_rn_call(a[j], nv);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        mx[j] = fmaxf(mx[j], x[t][j]);
        mn[j] = fminf(mn[j], x[t][j]);
      }
    }
    uint8_t* blk = out + ((static_cast<size_t>(n) * H + hr) * G + gi) * kBlk;
    float s[4], rs[4];
    int zi[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const QParams p = int_zero_params(mx[j], mn[j]);
      s[j] = p.s;
      rs[j] = p.rs;
      zi[j] = static_cast<int>(p.z);
      const int c = c0 + j;
      if (live) {
        reinterpret_cast<__half*>(blk + Dims<D>::kScaleOff)[meta_pos(c, 0, true)] = p.s16;
        reinterpret_cast<__half*>(blk + Dims<D>::kZeroOff)[meta_pos(c, 0, true)] = __float2half_rn(p.z + 1024.f);
      }
    }
    // partial words: [g][jj] for tokens g, g+8, g+16, g+24 and channel pair jj, fields as if chi = 0
    uint32_t pw[8][2];
#pragma unroll
    for (int g = 0; g < 8; ++g) pw[g][0] = pw[g][1] = 0u;
#pragma unroll
    for (int t = 0; t < kGT; ++t) {  // token t = 8 t8 + g: m-tile t8 / 2, row half t8 % 2
      const int g = t & 7, sh = 2 * ((t >> 4) * 4 + ((t >> 3) & 1));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int q = __float2int_rn(div_rn(x[t][j], s[j], rs[j])) + zi[j];
        q = min(max(q, 0), 3);
        pw[g][j >> 1] |= static_cast<uint32_t>(q) << ((j & 1) * 16 + sh);
      }
    }
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      const uint32_t a = pw[g][0] << (4 * chi), b = pw[g][1] << (4 * chi);
      const uint32_t mine = chi ? b : a, other = chi ? a : b;
      const uint32_t w = mine | __shfl_xor_sync(0xffffffffu, other, 2);
      const int wl = g * 4 + t4w;
      if (live) *reinterpret_cast<uint32_t*>(blk + ((ct >> 2) * 32 + wl) * 16 + (ct & 3) * 4) = w;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Pack values: grid (T/32, H, N), D threads = (token, channel group); per-token groups of 32 channels.
// ------------------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(D) pack_values_kernel(const T* __restrict__ v, uint8_t* __restrict__ out,
                                                         int H, int Tn, int G) {
  constexpr int kGroups = Dims<D>::kGroups;
  constexpr int kGroupsLog2 = kGroups == 2 ? 1 : kGroups == 4 ? 2 : 3;
  __shared__ __align__(16) uint8_t codes[kGT * D];  // [token][channel]
  const int gi = blockIdx.x, h = blockIdx.y, n = blockIdx.z;
  const int tid = threadIdx.x;
  const int t = tid >> kGroupsLog2, grp = tid & (kGroups - 1);
  const T* src = v + ((static_cast<size_t>(n) * H + h) * Tn + gi * kGT + t) * D + grp * 32;
  float x[32];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint4 raw = reinterpret_cast<const uint4*>(src)[i];
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) x[i * 8 + j] = Cvt<T>::to_f(e[j]);
  }
  float mx = -INFINITY, mn = INFINITY;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    mx = fmaxf(mx, x[i]);
    mn = fminf(mn, x[i]);
  }
  QParams p = int_zero_params(mx, mn);
  uint8_t* blk = out + ((static_cast<size_t>(n) * H + h) * G + gi) * Dims<D>::kBlk;
#pragma unroll
  for (int i = 0; i < 32; ++i) codes[t * D + grp * 32 + i] = static_cast<uint8_t>(int_zero_code(x[i], p));
  reinterpret_cast<__half*>(blk + Dims<D>::kScaleOff)[meta_pos(t, grp, false)] = p.s16;
  reinterpret_cast<__half*>(blk + Dims<D>::kZeroOff)[meta_pos(t, grp, false)] = __float2half_rn(p.z + 1024.f);
  __syncthreads();
  store_value_words<D>(codes, blk, tid, D);
}

// ------------------------------------------------------------------------------------------------
// Decode attention.
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 u2h(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// 2-bit field f of both 16-bit halves of w, as fp16 1024 + code: one LOP3 ((x & mask) | magic); `magic`
// is 0x64006400 held in a register (an immediate would make the compiler split it into two LOP3s).
template <int F>
__device__ __forceinline__ uint32_t dqr(uint32_t w, uint32_t magic) {
  const uint32_t x = F ? (w >> (2 * F)) : w;
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(x), "n"(0x00030003), "r"(magic));
  return d;
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t movtrans(uint32_t a) {
  uint32_t d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
  return d;
}

// word i of a lane's D/16 packed words (i is a compile-time constant after unrolling)
template <int N>
__device__ __forceinline__ uint32_t word_of(const uint4 (&w)[N], int i) {
  const uint4& a = w[i >> 2];
  const int c = i & 3;
  return c == 0 ? a.x : c == 1 ? a.y : c == 2 ? a.z : a.w;
}

struct DecodeParams {
  const void* q;          // [B, Hq, D]
  const uint8_t* kdata;   // [B, Hkv, Gcap, 12 D]
  const uint8_t* vdata;   // [B, Hkv, Gcap, 12 D]
  const float* norms;     // [B, Tcap]
  const int* qlen;        // [B] quantized tokens (multiple of 32)
  const void* rk;         // [B, Hkv, R, D] rotated residual keys
  const void* rv;         // [B, Hkv, R, D] residual values
  const int* rlen;        // [B]
  float* pm;              // [B, Hq, S]
  float* pl;              // [B, Hq, S]
  float* po;              // [B, Hq, S, D]
  void* out;              // [B, Hq, D]
  int Hkv, Gcap, Tcap, R, nsplit, gps;  // splits: nsplit quantized + ceil(R/32) residual
  float scale_log2;       // softmax scale * log2(e)
  int mode;               // diagnostics: 4 = loads only (no math), 8 = math only (no loads); 0 normally
  int rotate;             // 1: Hadamard-rotate the query (OScaR); 0: keys are in the query's basis (KIVI)
};

// smem layout of the decode CTA: q [8][D] fp32 (4 KB for D = 128), then per-warp pipeline stages; the merge
// area (m, l [kNW][8], o [kNW][8][D] fp32) reuses the pipeline area after a barrier. D = 256 needs 82 KB
// (above the default 48 KB: the launcher raises the limit) and up to 255 registers: 2 CTAs per SM.
template <int D>
struct DecodeCfg {
  static constexpr int kQBytes = 8 * D * 4;
  static constexpr int kPipeBytes = kNW * kStages * Dims<D>::kStageBytes;
  static constexpr int kMergeBytes = (2 * kNW * 8 + kNW * 8 * D) * 4;
  static constexpr int kSmem = kQBytes + (kPipeBytes > kMergeBytes ? kPipeBytes : kMergeBytes);
  static constexpr int kMinCtas = D > 128 ? 2 : 4;  // per SM, the register budget of __launch_bounds__
};

template <typename T, int D, int GQA, bool FM>
__global__ void __launch_bounds__(128, DecodeCfg<D>::kMinCtas) decode_kernel(DecodeParams P) {
  constexpr int kD = D;
  constexpr int kE = Dims<D>::kE;          // residual / query: channels per lane
  constexpr int kTiles = Dims<D>::kTiles;  // 16-channel tiles
  constexpr int kGroups = Dims<D>::kGroups;
  constexpr int kBlk = Dims<D>::kBlk;
  constexpr int kBlkChunks = kBlk / 16;
  constexpr int kStageBytes = Dims<D>::kStageBytes;
  constexpr int kStageChunks = Dims<D>::kStageChunks;
  constexpr int kQBytes = DecodeCfg<D>::kQBytes;
  constexpr float kInvSqrtD = Dims<D>::kInvSqrt;
  extern __shared__ __align__(16) uint8_t smem[];
  float* qs = reinterpret_cast<float*>(smem);
  uint8_t* pipe = smem + kQBytes;
  float* mg_m = reinterpret_cast<float*>(pipe);
  float* mg_l = mg_m + kNW * 8;
  float* mg_o = mg_l + kNW * 8;

  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int Hq = P.Hkv * GQA;
  const int S = P.nsplit + (P.R + kGT - 1) / kGT;

  // ---- quantized splits: start the first cp.async stages before the query prologue (they need only
  // the device-side length), so that the loads overlap the rotation ----
  const bool residual_cta = split >= P.nsplit;
  const int G = P.qlen[b] / kGT;
  const int g0 = split * P.gps;
  const int g1 = min(g0 + P.gps, G);
  const int first = g0 + warp;
  const int n = first < g1 ? (g1 - first + kNW - 1) / kNW : 0;
  const size_t head_base = (static_cast<size_t>(b) * P.Hkv + hk) * P.Gcap;
  const uint8_t* kbase = P.kdata + head_base * kBlk;
  const uint8_t* vbase = P.vdata + head_base * kBlk;
  const bool has_norm = P.norms != nullptr;
  const float* nbase = has_norm ? P.norms + static_cast<size_t>(b) * P.Tcap : nullptr;
  const int stage_chunks = has_norm ? kStageChunks : kStageChunks - kGT * 4 / 16;
  uint8_t* wpipe = pipe + warp * kStages * kStageBytes;

  auto issue = [&](int i) {
    const int gi = first + i * kNW;
    uint8_t* dst = wpipe + (i % kStages) * kStageBytes;
    const uint8_t* ks = kbase + static_cast<size_t>(gi) * kBlk;
    const uint8_t* vs = vbase + static_cast<size_t>(gi) * kBlk;
    const uint8_t* ns = reinterpret_cast<const uint8_t*>(nbase + gi * kGT);
#pragma unroll
    for (int c = lane; c < stage_chunks; c += 32) {
      const uint8_t* src = c < kBlkChunks         ? ks + c * 16
                           : c < 2 * kBlkChunks ? vs + (c - kBlkChunks) * 16
                                                : ns + (c - 2 * kBlkChunks) * 16;
      cp_async16(dst + c * 16, src);
    }
  };

  // residual CTAs: issue their global loads (8 tokens per warp) before the prologue as well
  Vec16<kE> kr[8], vr[8];
  const int L = P.rlen[b];
  const int t0 = (split - P.nsplit) * kGT + warp * 8;
  const T* rkp = reinterpret_cast<const T*>(P.rk) + (static_cast<size_t>(b) * P.Hkv + hk) * P.R * kD;
  const T* rvp = reinterpret_cast<const T*>(P.rv) + (static_cast<size_t>(b) * P.Hkv + hk) * P.R * kD;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int t = t0 + j;
    if (residual_cta && t < L) {
      kr[j] = *reinterpret_cast<const Vec16<kE>*>(rkp + static_cast<size_t>(t) * kD + lane * kE);
      vr[j] = *reinterpret_cast<const Vec16<kE>*>(rvp + static_cast<size_t>(t) * kD + lane * kE);
    } else {
      kr[j] = Vec16<kE>{};
      vr[j] = Vec16<kE>{};
    }
  }
  if (!residual_cta) {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < n && !(P.mode & 8)) issue(s);
      cp_async_commit();
    }
  }

  // ---- query: load, rotate (normalized FWHT in fp32), fold softmax scale * log2(e) ----
  const T* qp = reinterpret_cast<const T*>(P.q) + (static_cast<size_t>(b) * Hq + hk * GQA) * kD;
  for (int j = warp; j < 8; j += kNW) {
    float v[kE] = {};
    if (j < GQA) {
      const Vec16<kE> raw = *reinterpret_cast<const Vec16<kE>*>(qp + j * kD + lane * kE);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < kE; ++i) v[i] = Cvt<T>::to_f(e[i]);
      if (P.rotate) fwht_warp<kE>(v, lane);
    }
    store_f<kE>(qs + j * kD + lane * kE, v);
  }
  __syncthreads();
  const float qmul = (P.rotate ? kInvSqrtD : 1.f) * P.scale_log2;  // the FWHT above is unnormalized

  float m_w[2] = {kNegBig, kNegBig};  // quantized path: heads 2t, 2t+1
  if (residual_cta) {
    // ---- residual window, 32 tokens per CTA: warp = 8 tokens (all loads issued up front), lane = D/32
    // channels, fp32 ----
    float qf[GQA][kE];
#pragma unroll
    for (int j = 0; j < GQA; ++j)
#pragma unroll
      for (int i = 0; i < kE; ++i) qf[j][i] = qs[j * kD + lane * kE + i] * qmul;
    __syncthreads();  // the merge area (pipe) is not q's; kept for symmetry with the other branch
#pragma unroll
    for (int h = 0; h < GQA; ++h) {
      float sc[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const T* ke = reinterpret_cast<const T*>(&kr[j]);
        float d = qf[h][0] * Cvt<T>::to_f(ke[0]);
#pragma unroll
        for (int i = 1; i < kE; ++i) d = d + qf[h][i] * Cvt<T>::to_f(ke[i]);
        sc[j] = d;
      }
#pragma unroll
      for (int mm = 16; mm >= 1; mm >>= 1)
#pragma unroll
        for (int j = 0; j < 8; ++j) sc[j] += __shfl_xor_sync(0xffffffffu, sc[j], mm);
      float m = kNegBig;
#pragma unroll
      for (int j = 0; j < 8; ++j) m = (t0 + j < L) ? fmaxf(m, sc[j]) : m;
      float l = 0.f, o[kE] = {};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float pr = (t0 + j < L) ? exp2f(sc[j] - m) : 0.f;
        const T* ve = reinterpret_cast<const T*>(&vr[j]);
        l += pr;
#pragma unroll
        for (int i = 0; i < kE; ++i) o[i] += pr * Cvt<T>::to_f(ve[i]);
      }
      if (lane == 0) {
        mg_m[warp * 8 + h] = m;
        mg_l[warp * 8 + h] = l;
      }
#pragma unroll
      for (int i = 0; i < kE; ++i) mg_o[(warp * 8 + h) * kD + lane * kE + i] = o[i];
    }
  } else {
    // ---- quantized part ----
    const int g = lane >> 2, t4 = lane & 3;
    // B operand of QK: Q'[channel][head g] = q * scale; q as half2 pairs of channels (16kt+2t, +1), (+8).
    __half2 qh[kTiles][2];
#pragma unroll
    for (int kt = 0; kt < kTiles; ++kt) {
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        int c = kt * 16 + hi * 8 + t4 * 2;
        float x0 = g < GQA ? qs[g * kD + c] * qmul : 0.f;
        float x1 = g < GQA ? qs[g * kD + c + 1] * qmul : 0.f;
        qh[kt][hi] = __floats2half2_rn(x0, x1);
      }
    }
    float o[kTiles][4];
#pragma unroll
    for (int i = 0; i < kTiles; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) o[i][j] = 0.f;
    float l_w[2] = {0.f, 0.f};
    float vb[4] = {0.f, 0.f, 0.f, 0.f};  // FM: sum_t p * mn, rows = the 4 channel groups, cols = heads
    // 0x64006400, opaque to the compiler (P.mode < 16, so the shift is 0)
    const uint32_t magic = 0x64006400u | (static_cast<uint32_t>(P.mode) >> 28);
    const __half2 hmagic = u2h(magic);

    for (int i = 0; i < n; ++i) {
      if (i + kStages - 1 < n && !(P.mode & 8)) issue(i + kStages - 1);
      cp_async_commit();
      cp_async_wait<kStages - 1>();
      __syncwarp();
      if (P.mode & 4) continue;
      const uint8_t* st = wpipe + (i % kStages) * kStageBytes;
      uint4 kw[kTiles / 4];
#pragma unroll
      for (int i = 0; i < kTiles / 4; ++i) kw[i] = reinterpret_cast<const uint4*>(st)[32 * i + lane];
      // metadata: this thread's D/8 fp16 pairs of scale and of 1024 + zero, D/32 16-byte loads each
      const uint4* ksc4 = reinterpret_cast<const uint4*>(st + Dims<D>::kScaleOff) + t4;
      const uint4* kzz4 = reinterpret_cast<const uint4*>(st + Dims<D>::kZeroOff) + t4;
      const uint8_t* vst = st + kBlk;
      const uint4* vsc4 = reinterpret_cast<const uint4*>(vst + Dims<D>::kScaleOff) + t4;
      const uint4* vzz4 = reinterpret_cast<const uint4*>(vst + Dims<D>::kZeroOff) + t4;
      const float* nr = reinterpret_cast<const float*>(st + 2 * kBlk);

      // S = K Q' : rows = tokens (2 m-tiles of 16), cols = heads (8), k = channels (D/16 k-tiles of 16).
      // A holds 1024 + code (exact fp16, one LOP3 per pair) minus 1024 + zero (HSUB2, exact), or with
      // OSCAR_K_HSUB=0 the offset and zero point are removed by one more MMA per k-tile whose A rows are all
      // 1024 + zero (bias, identical for every token).
      float acc[2][4], accb[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[0][j] = acc[1][j] = accb[j] = 0.f;
#pragma unroll
      for (int kt = 0; kt < kTiles; ++kt) {
        const uint32_t w = word_of(kw, kt);
        const uint4 sq = ksc4[(kt >> 1) * 4], zq = kzz4[(kt >> 1) * 4];
        const uint32_t za = (kt & 1) ? zq.z : zq.x, zb = (kt & 1) ? zq.w : zq.y;
        const uint32_t b0 = h2u(__hmul2(qh[kt][0], u2h((kt & 1) ? sq.z : sq.x)));
        const uint32_t b1 = h2u(__hmul2(qh[kt][1], u2h((kt & 1) ? sq.w : sq.y)));
        if (FM) {
          // codes exactly (1024 + code - 1024); the offset sum_c q_c mn_c by one MMA with A rows = mn, B = q
          mma16816(acc[0], h2u(__hsub2(u2h(dqr<0>(w, magic)), hmagic)), h2u(__hsub2(u2h(dqr<1>(w, magic)), hmagic)),
                   h2u(__hsub2(u2h(dqr<2>(w, magic)), hmagic)), h2u(__hsub2(u2h(dqr<3>(w, magic)), hmagic)), b0, b1);
          mma16816(acc[1], h2u(__hsub2(u2h(dqr<4>(w, magic)), hmagic)), h2u(__hsub2(u2h(dqr<5>(w, magic)), hmagic)),
                   h2u(__hsub2(u2h(dqr<6>(w, magic)), hmagic)), h2u(__hsub2(u2h(dqr<7>(w, magic)), hmagic)), b0, b1);
          mma16816(accb, za, za, zb, zb, h2u(qh[kt][0]), h2u(qh[kt][1]));
          continue;
        }
#if OSCAR_K_HSUB
        const __half2 hza = u2h(za), hzb = u2h(zb);
        mma16816(acc[0], h2u(__hsub2(u2h(dqr<0>(w, magic)), hza)), h2u(__hsub2(u2h(dqr<1>(w, magic)), hza)),
                 h2u(__hsub2(u2h(dqr<2>(w, magic)), hzb)), h2u(__hsub2(u2h(dqr<3>(w, magic)), hzb)), b0, b1);
        mma16816(acc[1], h2u(__hsub2(u2h(dqr<4>(w, magic)), hza)), h2u(__hsub2(u2h(dqr<5>(w, magic)), hza)),
                 h2u(__hsub2(u2h(dqr<6>(w, magic)), hzb)), h2u(__hsub2(u2h(dqr<7>(w, magic)), hzb)), b0, b1);
#else
        mma16816(acc[0], dqr<0>(w, magic), dqr<1>(w, magic), dqr<2>(w, magic), dqr<3>(w, magic), b0, b1);
        mma16816(acc[1], dqr<4>(w, magic), dqr<5>(w, magic), dqr<6>(w, magic), dqr<7>(w, magic), b0, b1);
        mma16816(accb, za, za, zb, zb, b0, b1);
#endif
      }
      // logits (log2 domain): (raw - bias) times the token norm
      float mx[2] = {kNegBig, kNegBig};
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const float n0 = has_norm ? nr[mt * 16 + g] : 1.f, n1 = has_norm ? nr[mt * 16 + 8 + g] : 1.f;
        const float sb = FM ? 1.f : -1.f;  // FM adds q . mn; the integer zero point's bias is subtracted
        acc[mt][0] = fmaf(sb, accb[0], acc[mt][0]) * n0;
        acc[mt][1] = fmaf(sb, accb[1], acc[mt][1]) * n0;
        acc[mt][2] = fmaf(sb, accb[0], acc[mt][2]) * n1;
        acc[mt][3] = fmaf(sb, accb[1], acc[mt][3]) * n1;
        mx[0] = fmaxf(mx[0], fmaxf(acc[mt][0], acc[mt][2]));
        mx[1] = fmaxf(mx[1], fmaxf(acc[mt][1], acc[mt][3]));
      }
      float alpha[2];
#pragma unroll
      for (int hc = 0; hc < 2; ++hc) {
#pragma unroll
        for (int mm = 4; mm <= 16; mm <<= 1) mx[hc] = fmaxf(mx[hc], __shfl_xor_sync(0xffffffffu, mx[hc], mm));
        const float mnew = fmaxf(m_w[hc], mx[hc]);
        alpha[hc] = ex2(m_w[hc] - mnew);
        m_w[hc] = mnew;
      }
      uint32_t pb[2][2];  // [mt][lo/hi 8 tokens]: B operand of PV (tokens x heads), after transpose
      float lsum[2] = {0.f, 0.f};
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const float p0 = ex2(acc[mt][0] - m_w[0]), p1 = ex2(acc[mt][1] - m_w[1]);
        const float p2 = ex2(acc[mt][2] - m_w[0]), p3 = ex2(acc[mt][3] - m_w[1]);
        lsum[0] += p0 + p2;
        lsum[1] += p1 + p3;
        pb[mt][0] = movtrans(h2u(__floats2half2_rn(p0, p1)));
        pb[mt][1] = movtrans(h2u(__floats2half2_rn(p2, p3)));
      }
      l_w[0] = l_w[0] * alpha[0] + lsum[0];
      l_w[1] = l_w[1] * alpha[1] + lsum[1];
      if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int ct = 0; ct < kTiles; ++ct) {
          o[ct][0] *= alpha[0];
          o[ct][1] *= alpha[1];
          o[ct][2] *= alpha[0];
          o[ct][3] *= alpha[1];
        }
        if (FM) {
          vb[0] *= alpha[0];
          vb[1] *= alpha[1];
        }
      }
      // O^T += V^T P'^T : rows = channels (D/16 tiles), cols = heads, k = tokens (2 k-steps of 16).
      uint4 vw[kTiles / 4];
#pragma unroll
      for (int i = 0; i < kTiles / 4; ++i) vw[i] = reinterpret_cast<const uint4*>(vst)[32 * i + lane];
      if (FM) {
        // sum_t p_t mn_tg: one MMA per 16 tokens, A rows = the D/32 groups' mn (rows D/32..15 zero), B = p
        const uint4 zg = vzz4[(g & (kGroups - 1)) * 4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const uint32_t alo = g < kGroups ? (mt ? zg.z : zg.x) : 0u, ahi = g < kGroups ? (mt ? zg.w : zg.y) : 0u;
          mma16816(vb, alo, 0u, ahi, 0u, pb[mt][0], pb[mt][1]);
        }
      }
#pragma unroll
      for (int grp = 0; grp < kGroups; ++grp) {
        const uint4 sq = vsc4[grp * 4], zq = vzz4[grp * 4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const uint32_t b0 = h2u(__hmul2(u2h(pb[mt][0]), u2h(mt ? sq.z : sq.x)));
          const uint32_t b1 = h2u(__hmul2(u2h(pb[mt][1]), u2h(mt ? sq.w : sq.y)));
          // 1024 + zero is subtracted from each fp16 operand pair (exact); measured faster here than a
          // bias MMA with a negated B operand (as the keys do), which needs register copies for the quads
          const __half2 hza = FM ? hmagic : u2h(mt ? zq.z : zq.x), hzb = FM ? hmagic : u2h(mt ? zq.w : zq.y);
#pragma unroll
          for (int cc = 0; cc < 2; ++cc) {
            const int ct = grp * 2 + cc;
            const uint32_t w = word_of(vw, ct);
            if (mt == 0) {
              mma16816(o[ct], h2u(__hsub2(u2h(dqr<0>(w, magic)), hza)), h2u(__hsub2(u2h(dqr<1>(w, magic)), hza)),
                       h2u(__hsub2(u2h(dqr<2>(w, magic)), hzb)), h2u(__hsub2(u2h(dqr<3>(w, magic)), hzb)), b0, b1);
            } else {
              mma16816(o[ct], h2u(__hsub2(u2h(dqr<4>(w, magic)), hza)), h2u(__hsub2(u2h(dqr<5>(w, magic)), hza)),
                       h2u(__hsub2(u2h(dqr<6>(w, magic)), hzb)), h2u(__hsub2(u2h(dqr<7>(w, magic)), hzb)), b0, b1);
            }
          }
        }
      }
      __syncwarp();
    }
    cp_async_wait<0>();
#pragma unroll
    for (int hc = 0; hc < 2; ++hc)
#pragma unroll
      for (int mm = 4; mm <= 16; mm <<= 1) l_w[hc] += __shfl_xor_sync(0xffffffffu, l_w[hc], mm);
    float bias[2][kGroups];  // FM: the value offset of channel group grp, heads 2 t4 + hc (lane grp * 4 + t4 has it)
#pragma unroll
    for (int hc = 0; hc < 2; ++hc)
#pragma unroll
      for (int grp = 0; grp < kGroups; ++grp) bias[hc][grp] = FM ? __shfl_sync(0xffffffffu, vb[hc], grp * 4 + t4) : 0.f;
    __syncthreads();  // every warp is done with its pipeline stages: the merge area may be written
#pragma unroll
    for (int hc = 0; hc < 2; ++hc) {
      const int hh = 2 * t4 + hc;
      if (hh < GQA) {
        if (g == 0) {
          mg_m[warp * 8 + hh] = m_w[hc];
          mg_l[warp * 8 + hh] = l_w[hc];
        }
#pragma unroll
        for (int ct = 0; ct < kTiles; ++ct) {
          mg_o[(warp * 8 + hh) * kD + ct * 16 + g] = o[ct][hc] + bias[hc][ct >> 1];
          mg_o[(warp * 8 + hh) * kD + ct * 16 + 8 + g] = o[ct][2 + hc] + bias[hc][ct >> 1];
        }
      }
    }
  }
  __syncthreads();
  // ---- merge the warps; thread = channel (D = 256: two channels each; D = 64: threads 64.. idle) ----
#pragma unroll
  for (int rep = 0; rep < (D + 127) / 128; ++rep) {
    const int c = tid + 128 * rep;
    if (D < 128 && c >= D) break;
#pragma unroll
    for (int j = 0; j < GQA; ++j) {
      float M = kNegBig;
#pragma unroll
      for (int w = 0; w < kNW; ++w) M = fmaxf(M, mg_m[w * 8 + j]);
      float L = 0.f, O = 0.f;
#pragma unroll
      for (int w = 0; w < kNW; ++w) {
        const float e = exp2f(mg_m[w * 8 + j] - M);
        L += mg_l[w * 8 + j] * e;
        O += mg_o[(w * 8 + j) * kD + c] * e;
      }
      const size_t row = (static_cast<size_t>(b) * Hq + hk * GQA + j) * S + split;
      P.po[row * kD + c] = O;
      if (c == 0) {
        P.pm[row] = M;
        P.pl[row] = L;
      }
    }
  }
}

// Combine the splits of one (sequence, query head): weights in smem, the S partial outputs read by eight
// warps in parallel (D/32 floats per lane, eight loads in flight per warp), reduced in smem. Dynamic smem:
// S floats.
constexpr int kCombineWarps = 8;
template <typename T, int D>
__global__ void __launch_bounds__(32 * kCombineWarps) combine_kernel(const float* __restrict__ pm,
                                                                     const float* __restrict__ pl,
                                                                     const float* __restrict__ po,
                                                                     T* __restrict__ out, int S) {
  constexpr int kD = D;
  constexpr int kE = Dims<D>::kE;
  extern __shared__ float wts[];  // [S]
  __shared__ float red[kCombineWarps][kD];
  __shared__ float sc[2 * kCombineWarps];
  constexpr int kThreads = 32 * kCombineWarps;
  const int row = blockIdx.x;  // b * Hq + hq
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* m = pm + static_cast<size_t>(row) * S;
  const float* l = pl + static_cast<size_t>(row) * S;
  const float* o = po + static_cast<size_t>(row) * S * kD;
  float M = kNegBig;
  for (int s = tid; s < S; s += kThreads) M = fmaxf(M, m[s]);
#pragma unroll
  for (int mm = 16; mm >= 1; mm >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, mm));
  if (lane == 0) sc[warp] = M;
  __syncthreads();
  M = sc[0];
#pragma unroll
  for (int w = 1; w < kCombineWarps; ++w) M = fmaxf(M, sc[w]);
  float L = 0.f;
  for (int s = tid; s < S; s += kThreads) {
    const float e = exp2f(m[s] - M);
    wts[s] = e;
    L += e * l[s];
  }
#pragma unroll
  for (int mm = 16; mm >= 1; mm >>= 1) L += __shfl_xor_sync(0xffffffffu, L, mm);
  if (lane == 0) sc[kCombineWarps + warp] = L;
  __syncthreads();
  L = 0.f;
#pragma unroll
  for (int w = 0; w < kCombineWarps; ++w) L += sc[kCombineWarps + w];
  // lane = channels kE lane .. kE lane + kE-1 as kNV float2 / float4 vectors
  using FV = typename std::conditional<kE == 2, float2, float4>::type;
  constexpr int kNV = kE == 2 ? 1 : kE / 4;
  FV acc[kNV];
#pragma unroll
  for (int i = 0; i < kNV; ++i) acc[i] = FV{};
#pragma unroll 8
  for (int s = warp; s < S; s += kCombineWarps) {
    const float e = wts[s];
#pragma unroll
    for (int i = 0; i < kNV; ++i) {
      const FV v = reinterpret_cast<const FV*>(o + static_cast<size_t>(s) * kD)[lane * kNV + i];
      acc[i].x += e * v.x;
      acc[i].y += e * v.y;
      if constexpr (kE != 2) {
        acc[i].z += e * v.z;
        acc[i].w += e * v.w;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kNV; ++i) reinterpret_cast<FV*>(red[warp])[lane * kNV + i] = acc[i];
  __syncthreads();
  if (tid < kD) {
    float O = 0.f;
#pragma unroll
    for (int w = 0; w < kCombineWarps; ++w) O += red[w][tid];
    out[static_cast<size_t>(row) * kD + tid] = Cvt<T>::from_f(L > 0.f ? O / L : 0.f);
  }
}

// ------------------------------------------------------------------------------------------------
// Append one decode token per sequence to the full-precision window: grid (Hkv, B), one warp.
// res_k[b, h, slot[b]] = the Hadamard-rotated key (rotate = 1: OScaR; the reference's butterfly order in
// fp32, times 1/sqrt(D), rounded to T) or the key as is (KIVI); res_v[b, h, slot[b]] = the value.
// Slots outside [0, R) write nothing. Lane = channels E lane .. E lane + E-1 (E = D/32).
// ------------------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(32) append_window_kernel(const T* __restrict__ k, const T* __restrict__ v,
                                                           T* __restrict__ rk, T* __restrict__ rv,
                                                           const int* __restrict__ slot, int Hkv, int R,
                                                           int rotate) {
  constexpr int kE = Dims<D>::kE;
  using V = Vec16<kE>;
  const int h = blockIdx.x, b = blockIdx.y, lane = threadIdx.x;
  const int s = slot[b];
  if (s < 0 || s >= R) return;
  const size_t src = (static_cast<size_t>(b) * Hkv + h) * D + lane * kE;
  const size_t dst = ((static_cast<size_t>(b) * Hkv + h) * R + s) * D + lane * kE;
  V kraw = *reinterpret_cast<const V*>(k + src);
  if (rotate) {
    const T* e = reinterpret_cast<const T*>(&kraw);
    float x[kE];
#pragma unroll
    for (int i = 0; i < kE; ++i) x[i] = Cvt<T>::to_f(e[i]);
    fwht_warp<kE>(x, lane);
    V rot;
    T* r = reinterpret_cast<T*>(&rot);
#pragma unroll
    for (int i = 0; i < kE; ++i) r[i] = Cvt<T>::from_f(x[i] * Dims<D>::kInvSqrt);
    kraw = rot;
  }
  *reinterpret_cast<V*>(rk + dst) = kraw;
  *reinterpret_cast<V*>(rv + dst) = *reinterpret_cast<const V*>(v + src);
}

// ------------------------------------------------------------------------------------------------
// Host launchers (return a cudaError_t; dtype: 0 = bf16, 1 = fp16; D: the head dim, 64, 128 or 256 — any
// other gives cudaErrorInvalidValue, the binding names the parameter first).
// ------------------------------------------------------------------------------------------------
template <int D>
static int launch_pack_keys_d(const void* k, uint8_t* out, float* norms, int N, int H, int Tn, int dtype,
                              bool rotate, cudaStream_t stream) {
  const int G = Tn / kGT;
  const size_t smem = pack_keys_smem<D>(H, 2);
  // H <= PackKeysCfg<D>::kMaxHeads (checked by the binding)
  constexpr int kMaxSmem = static_cast<int>(pack_keys_smem<D>(PackKeysCfg<D>::kMaxHeads, 2));
  static bool attr_set = false;  // set once, outside any graph capture of a later call
  if (!attr_set) {
    cudaFuncSetAttribute(pack_keys_kernel<__nv_bfloat16, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
    cudaFuncSetAttribute(pack_keys_kernel<__half, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
    attr_set = true;
  }
  dim3 grid(G, N);
  if (dtype == 0)
    pack_keys_kernel<__nv_bfloat16, D><<<grid, 128, smem, stream>>>(static_cast<const __nv_bfloat16*>(k), out, norms,
                                                                     H, Tn, G, rotate ? 1 : 0);
  else
    pack_keys_kernel<__half, D><<<grid, 128, smem, stream>>>(static_cast<const __half*>(k), out, norms, H, Tn, G,
                                                              rotate ? 1 : 0);
  return static_cast<int>(cudaGetLastError());
}

int launch_pack_keys(const void* k, uint8_t* out, float* norms, int N, int H, int Tn, int D, int dtype,
                     bool rotate, cudaStream_t stream) {
  switch (D) {
    case 64: return launch_pack_keys_d<64>(k, out, norms, N, H, Tn, dtype, rotate, stream);
    case 128: return launch_pack_keys_d<128>(k, out, norms, N, H, Tn, dtype, rotate, stream);
    case 256: return launch_pack_keys_d<256>(k, out, norms, N, H, Tn, dtype, rotate, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int pack_keys_max_heads(int D) {
  switch (D) {
    case 64: return PackKeysCfg<64>::kMaxHeads;
    case 128: return PackKeysCfg<128>::kMaxHeads;
    case 256: return PackKeysCfg<256>::kMaxHeads;
    default: return 0;
  }
}

template <int D>
static int launch_pack_values_d(const void* v, uint8_t* out, int N, int H, int Tn, int dtype, cudaStream_t stream) {
  const int G = Tn / kGT;
  dim3 grid(G, H, N);
  if (dtype == 0)
    pack_values_kernel<__nv_bfloat16, D><<<grid, D, 0, stream>>>(static_cast<const __nv_bfloat16*>(v), out, H, Tn, G);
  else
    pack_values_kernel<__half, D><<<grid, D, 0, stream>>>(static_cast<const __half*>(v), out, H, Tn, G);
  return static_cast<int>(cudaGetLastError());
}

int launch_pack_values(const void* v, uint8_t* out, int N, int H, int Tn, int D, int dtype, cudaStream_t stream) {
  switch (D) {
    case 64: return launch_pack_values_d<64>(v, out, N, H, Tn, dtype, stream);
    case 128: return launch_pack_values_d<128>(v, out, N, H, Tn, dtype, stream);
    case 256: return launch_pack_values_d<256>(v, out, N, H, Tn, dtype, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

template <typename T, int D, int GQA>
static void launch_decode_t(const DecodeParams& p, int B, int phases, bool fm, cudaStream_t stream) {
  constexpr int kSmem = DecodeCfg<D>::kSmem;
  static_assert(D > 128 || kSmem <= 48 * 1024, "decode smem above the default 48 KB limit");
  if constexpr (kSmem > 48 * 1024) {
    static bool attr_set = false;  // set once, outside any graph capture of a later call
    if (!attr_set) {
      cudaFuncSetAttribute(decode_kernel<T, D, GQA, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      cudaFuncSetAttribute(decode_kernel<T, D, GQA, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      attr_set = true;
    }
  }
  const int S = p.nsplit + (p.R + kGT - 1) / kGT;
  dim3 grid(S, p.Hkv, B);
  if (phases & 1) {
    if (fm)
      decode_kernel<T, D, GQA, true><<<grid, 128, kSmem, stream>>>(p);
    else
      decode_kernel<T, D, GQA, false><<<grid, 128, kSmem, stream>>>(p);
  }
  if (phases & 2)
    combine_kernel<T, D><<<B * p.Hkv * GQA, 32 * kCombineWarps, S * sizeof(float), stream>>>(
        p.pm, p.pl, p.po, static_cast<T*>(p.out), S);
}

template <typename T, int D>
static int launch_decode_dt(const DecodeParams& p, int B, int gqa, int phases, bool fm, cudaStream_t stream) {
  switch (gqa) {
    case 1: launch_decode_t<T, D, 1>(p, B, phases, fm, stream); break;
    case 2: launch_decode_t<T, D, 2>(p, B, phases, fm, stream); break;
    case 4: launch_decode_t<T, D, 4>(p, B, phases, fm, stream); break;
    case 8: launch_decode_t<T, D, 8>(p, B, phases, fm, stream); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
static int launch_decode_hd(const DecodeParams& p, int B, int D, int gqa, int phases, bool fm, cudaStream_t stream) {
  switch (D) {
    case 64: return launch_decode_dt<T, 64>(p, B, gqa, phases, fm, stream);
    case 128: return launch_decode_dt<T, 128>(p, B, gqa, phases, fm, stream);
    case 256: return launch_decode_dt<T, 256>(p, B, gqa, phases, fm, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int launch_decode(const void* q, const uint8_t* kdata, const uint8_t* vdata, const float* norms, const int* qlen,
                  const void* rk, const void* rv, const int* rlen, float* pm, float* pl, float* po, void* out,
                  int B, int Hkv, int D, int gqa, int Gcap, int Tcap, int R, int nsplit, int gps, float scale_log2,
                  int dtype, int phases, bool float_min, bool rotate, cudaStream_t stream) {
  DecodeParams p{q, kdata, vdata, norms, qlen, rk, rv, rlen, pm, pl, po, out, Hkv, Gcap, Tcap, R, nsplit, gps,
                 scale_log2, phases & 12, rotate ? 1 : 0};
  if (dtype == 0) return launch_decode_hd<__nv_bfloat16>(p, B, D, gqa, phases, float_min, stream);
  return launch_decode_hd<__half>(p, B, D, gqa, phases, float_min, stream);
}

template <int D>
static int launch_append_window_d(const void* k, const void* v, void* rk, void* rv, const int* slot, int B, int Hkv,
                                  int R, bool rotate, int dtype, cudaStream_t stream) {
  dim3 grid(Hkv, B);
  if (dtype == 0)
    append_window_kernel<__nv_bfloat16, D><<<grid, 32, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(k), static_cast<const __nv_bfloat16*>(v), static_cast<__nv_bfloat16*>(rk),
        static_cast<__nv_bfloat16*>(rv), slot, Hkv, R, rotate ? 1 : 0);
  else
    append_window_kernel<__half, D><<<grid, 32, 0, stream>>>(static_cast<const __half*>(k), static_cast<const __half*>(v),
                                                             static_cast<__half*>(rk), static_cast<__half*>(rv), slot,
                                                             Hkv, R, rotate ? 1 : 0);
  return static_cast<int>(cudaGetLastError());
}

int launch_append_window(const void* k, const void* v, void* rk, void* rv, const int* slot, int B, int Hkv, int R,
                         int D, bool rotate, int dtype, cudaStream_t stream) {
  switch (D) {
    case 64: return launch_append_window_d<64>(k, v, rk, rv, slot, B, Hkv, R, rotate, dtype, stream);
    case 128: return launch_append_window_d<128>(k, v, rk, rv, slot, B, Hkv, R, rotate, dtype, stream);
    case 256: return launch_append_window_d<256>(k, v, rk, rv, slot, B, Hkv, R, rotate, dtype, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int decode_smem_bytes(int D) {
  switch (D) {
    case 64: return DecodeCfg<64>::kSmem;
    case 128: return DecodeCfg<128>::kSmem;
    case 256: return DecodeCfg<256>::kSmem;
    default: return 0;
  }
}

}  // namespace oscar
