// torch binding for csrc/oscar_kernels.cu. Shapes and dtypes are checked here; the Python wrappers in
// oscar_core/kernels/__init__.py allocate the outputs and choose the split-KV sizes.

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cuda_runtime.h>

namespace oscar {
int launch_pack_keys(const void* k, uint8_t* out, float* norms, int N, int H, int Tn, int D, int dtype,
                     bool rotate, cudaStream_t stream);
int pack_keys_max_heads(int D);
int launch_pack_values(const void* v, uint8_t* out, int N, int H, int Tn, int D, int dtype, cudaStream_t stream);
int launch_decode(const void* q, const uint8_t* kdata, const uint8_t* vdata, const float* norms, const int* qlen,
                  const void* rk, const void* rv, const int* rlen, float* pm, float* pl, float* po, void* out,
                  int B, int Hkv, int D, int gqa, int Gcap, int Tcap, int R, int nsplit, int gps, float scale_log2,
                  int dtype, int phases, bool float_min, bool rotate, cudaStream_t stream);
int decode_smem_bytes(int D);
int launch_append_window(const void* k, const void* v, void* rk, void* rv, const int* slot, int B, int Hkv, int R,
                         int D, bool rotate, int dtype, cudaStream_t stream);
}  // namespace oscar

namespace {

// The kernels are compiled for these head dims; a block holds 12 * D bytes (1536 for D = 128).
int64_t checked_head_dim(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() >= 1, what, " must have a head-dim axis");
  const int64_t d = t.size(t.dim() - 1);
  TORCH_CHECK(d == 64 || d == 128 || d == 256, what, ": head_dim (last axis) must be 64, 128 or 256, got ", d);
  return d;
}

int dtype_code(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kBFloat16) return 0;
  TORCH_CHECK(t.scalar_type() == torch::kHalf, "expected a bfloat16 or float16 tensor, got ", t.scalar_type());
  return 1;
}

void check_cuda(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
}

void check_rc(int rc, const char* what) {
  TORCH_CHECK(rc == 0, what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

void pack_keys(torch::Tensor k, torch::Tensor out, torch::Tensor norms, bool rotate) {
  check_cuda(k, "k");
  check_cuda(out, "out");
  check_cuda(norms, "norms");
  TORCH_CHECK(k.dim() == 4, "k must be [N, H, T, head_dim]");
  const int64_t D = checked_head_dim(k, "k"), kBlk = 12 * D;
  const int64_t N = k.size(0), H = k.size(1), T = k.size(2);
  TORCH_CHECK(T % 32 == 0, "T must be a multiple of 32");
  TORCH_CHECK(H <= oscar::pack_keys_max_heads(D), "at most ", oscar::pack_keys_max_heads(D),
              " kv heads in the key pack kernel for head_dim ", D, ", got ", H);
  TORCH_CHECK(out.scalar_type() == torch::kUInt8 && out.numel() == N * H * (T / 32) * kBlk, "bad out");
  TORCH_CHECK(norms.scalar_type() == torch::kFloat && norms.numel() == N * T, "bad norms");
  if (N * T == 0) return;
  const c10::cuda::CUDAGuard guard(k.device());
  check_rc(oscar::launch_pack_keys(k.data_ptr(), out.data_ptr<uint8_t>(), norms.data_ptr<float>(), N, H, T, D,
                                   dtype_code(k), rotate, c10::cuda::getCurrentCUDAStream().stream()),
           "pack_keys");
}

void pack_values(torch::Tensor v, torch::Tensor out) {
  check_cuda(v, "v");
  check_cuda(out, "out");
  TORCH_CHECK(v.dim() == 4, "v must be [N, H, T, head_dim]");
  const int64_t D = checked_head_dim(v, "v"), kBlk = 12 * D;
  const int64_t N = v.size(0), H = v.size(1), T = v.size(2);
  TORCH_CHECK(T % 32 == 0, "T must be a multiple of 32");
  TORCH_CHECK(out.scalar_type() == torch::kUInt8 && out.numel() == N * H * (T / 32) * kBlk, "bad out");
  if (N * H * T == 0) return;
  const c10::cuda::CUDAGuard guard(v.device());
  check_rc(oscar::launch_pack_values(v.data_ptr(), out.data_ptr<uint8_t>(), N, H, T, D, dtype_code(v),
                                     c10::cuda::getCurrentCUDAStream().stream()),
           "pack_values");
}

void decode(torch::Tensor q, torch::Tensor kdata, torch::Tensor vdata, torch::Tensor norms, torch::Tensor qlen,
            torch::Tensor rk, torch::Tensor rv, torch::Tensor rlen, torch::Tensor pm, torch::Tensor pl,
            torch::Tensor po, torch::Tensor out, int64_t nsplit, int64_t gps, double scale_log2,
            int64_t phases, bool float_min, bool rotate) {
  for (auto* t : {&q, &kdata, &vdata, &norms, &qlen, &rk, &rv, &rlen, &pm, &pl, &po, &out}) check_cuda(*t, "input");
  TORCH_CHECK(q.dim() == 3, "q must be [B, Hq, head_dim]");
  const int64_t kD = checked_head_dim(q, "q"), kBlk = 12 * kD;
  const int64_t B = q.size(0), Hq = q.size(1);
  TORCH_CHECK(kdata.dim() == 4 && kdata.size(0) == B && kdata.size(3) == kBlk,
              "kdata must be [B, Hkv, G, 12 * head_dim] (", kBlk, " bytes for q's head_dim ", kD, ")");
  TORCH_CHECK(vdata.sizes() == kdata.sizes(), "vdata must match kdata");
  const int64_t Hkv = kdata.size(1), Gcap = kdata.size(2);
  TORCH_CHECK(Hq % Hkv == 0, "query heads must be a multiple of kv heads");
  const int64_t gqa = Hq / Hkv;
  TORCH_CHECK(gqa == 1 || gqa == 2 || gqa == 4 || gqa == 8, "GQA group must be 1, 2, 4 or 8");
  // an empty norms tensor means no token scaling (KIVI)
  const bool has_norms = norms.numel() > 0;
  TORCH_CHECK(!has_norms || (norms.dim() == 2 && norms.size(0) == B && norms.size(1) >= Gcap * 32 &&
                             norms.size(1) % 32 == 0),
              "norms must be [B, >= G*32] (a multiple of 32) or empty");
  TORCH_CHECK(norms.scalar_type() == torch::kFloat, "norms must be float32");
  TORCH_CHECK(rk.dim() == 4 && rk.size(0) == B && rk.size(1) == Hkv && rk.size(3) == kD,
              "rk must be [B, Hkv, R, head_dim] with q's head_dim ", kD);
  TORCH_CHECK(rv.sizes() == rk.sizes(), "rv must match rk");
  TORCH_CHECK(rk.scalar_type() == q.scalar_type() && rv.scalar_type() == q.scalar_type(), "residual dtype != q dtype");
  TORCH_CHECK(qlen.scalar_type() == torch::kInt && qlen.numel() == B, "qlen must be int32 [B]");
  TORCH_CHECK(rlen.scalar_type() == torch::kInt && rlen.numel() == B, "rlen must be int32 [B]");
  const int64_t S = nsplit + (rk.size(2) + 31) / 32;
  TORCH_CHECK(pm.numel() == B * Hq * S && pl.numel() == B * Hq * S && po.numel() == B * Hq * S * kD, "bad workspace");
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type(), "bad out");
  const c10::cuda::CUDAGuard guard(q.device());
  check_rc(oscar::launch_decode(q.data_ptr(), kdata.data_ptr<uint8_t>(), vdata.data_ptr<uint8_t>(),
                                has_norms ? norms.data_ptr<float>() : nullptr, qlen.data_ptr<int>(), rk.data_ptr(), rv.data_ptr(),
                                rlen.data_ptr<int>(), pm.data_ptr<float>(), pl.data_ptr<float>(), po.data_ptr<float>(),
                                out.data_ptr(), B, Hkv, kD, gqa, Gcap, has_norms ? norms.size(1) : 0, rk.size(2), nsplit, gps,
                                static_cast<float>(scale_log2), dtype_code(q), static_cast<int>(phases), float_min,
                                rotate, c10::cuda::getCurrentCUDAStream().stream()),
           "decode_attention");
}

void append_window(torch::Tensor k, torch::Tensor v, torch::Tensor rk, torch::Tensor rv, torch::Tensor slot,
                   bool rotate) {
  for (auto* t : {&k, &v, &rk, &rv, &slot}) check_cuda(*t, "input");
  TORCH_CHECK(k.dim() == 3, "k must be [B, Hkv, head_dim]");
  const int64_t kD = checked_head_dim(k, "k");
  TORCH_CHECK(v.sizes() == k.sizes() && v.scalar_type() == k.scalar_type(), "v must match k");
  const int64_t B = k.size(0), Hkv = k.size(1);
  TORCH_CHECK(rk.dim() == 4 && rk.size(0) == B && rk.size(1) == Hkv && rk.size(3) == kD,
              "res_k must be [B, Hkv, R, head_dim] with k's head_dim ", kD);
  TORCH_CHECK(rv.sizes() == rk.sizes(), "res_v must match res_k");
  TORCH_CHECK(rk.scalar_type() == k.scalar_type() && rv.scalar_type() == k.scalar_type(), "window dtype != k dtype");
  TORCH_CHECK(slot.scalar_type() == torch::kInt && slot.numel() == B, "slot must be int32 [B]");
  if (B * Hkv == 0) return;
  const c10::cuda::CUDAGuard guard(k.device());
  check_rc(oscar::launch_append_window(k.data_ptr(), v.data_ptr(), rk.data_ptr(), rv.data_ptr(), slot.data_ptr<int>(),
                                       B, Hkv, rk.size(2), kD, rotate, dtype_code(k),
                                       c10::cuda::getCurrentCUDAStream().stream()),
           "append_window");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_keys", &pack_keys, "fused Hadamard + token norm + per-channel INT2 quantization of keys");
  m.def("pack_values", &pack_values, "per-token INT2 quantization of (rotated) values");
  m.def("decode", &decode, "split-KV decode attention over packed INT2 keys/values + residual window");
  m.def("decode_smem_bytes", &oscar::decode_smem_bytes, "decode CTA smem bytes for a head dim",
        pybind11::arg("head_dim") = 128);
  m.def("pack_keys_max_heads", &oscar::pack_keys_max_heads, "kv heads the key pack kernel holds for a head dim");
  m.def("append_window", &append_window, "append one (rotated) token per sequence to the full-precision window");
}
