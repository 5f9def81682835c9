// CPU tile rasteriser for defocus-aware 3D Gaussian splatting: forward and analytic backward.
//
// The algorithm is that of 3DGS (Kerbl et al. 2023) as implemented by gsplat's CUDA
// kernels (Ye et al. 2024): Gaussians are binned into 16x16 tiles in depth order, every
// pixel composites its tile's list front to back and stops once its transmittance would
// fall below 1e-4, and the backward pass walks the same list back to front, recovering
// the transmittance by division instead of storing it. One OpenMP task is one
// (frame, tile); gradients are accumulated per tile, then into per-thread buffers, so no
// atomics are needed. Floating-point expressions mirror raster_torch.py operation by
// operation (compile with -ffp-contract=off) so skip / early-stop decisions agree.
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kAlphaMax = 0.99f;
constexpr float kTMin = 1e-4f;

struct Geometry {
  int width, height, tile, tiles_x, tiles_y, n_tiles;
};

// Per-tile Gaussian data gathered into contiguous arrays (structure of arrays).
struct TileData {
  std::vector<float> gx, gy, ca, cb, cc, op, thr, feat;
  void gather(int n, int k, const int32_t* ids, const float* means2d, const float* conics,
              const float* opac, const float* feats) {
    gx.resize(n); gy.resize(n); ca.resize(n); cb.resize(n); cc.resize(n);
    op.resize(n); thr.resize(n); feat.resize(static_cast<size_t>(n) * k);
    for (int j = 0; j < n; ++j) {
      const int64_t g = ids[j];
      gx[j] = means2d[2 * g];
      gy[j] = means2d[2 * g + 1];
      ca[j] = conics[3 * g];
      cb[j] = conics[3 * g + 1];
      cc[j] = conics[3 * g + 2];
      op[j] = opac[g];
      // alpha < 1/255 for certain when power exceeds log(255 o) by a margin far above rounding error;
      // this cheap test lets most (pixel, Gaussian) pairs skip the exponential.
      thr[j] = op[j] > 0.f ? std::log(op[j] * 255.0f) + 1e-3f : -1.0f;
      for (int c = 0; c < k; ++c) feat[static_cast<size_t>(j) * k + c] = feats[g * k + c];
    }
  }
};

inline float power_of(const TileData& d, int j, float px, float py, float& dx, float& dy) {
  dx = d.gx[j] - px;
  dy = d.gy[j] - py;
  return 0.5f * ((d.ca[j] * dx) * dx + (d.cc[j] * dy) * dy) + (d.cb[j] * dx) * dy;
}

// Tile lists of every frame: counting sort by tile of the depth-ordered Gaussians.
void bin_tiles(const int32_t* rects, const int64_t* order, int64_t m, int64_t n, int64_t frames,
               const Geometry& geo, int nthreads, torch::Tensor& offsets_t, torch::Tensor& ids_t) {
  const int T = geo.n_tiles;
  offsets_t = torch::zeros({frames, T + 1}, torch::kInt64);
  int64_t* offsets = offsets_t.data_ptr<int64_t>();
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t f = 0; f < frames; ++f) {
    int64_t* cnt = offsets + f * (T + 1) + 1;
    const int32_t* r = rects + f * n * 4;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t* q = r + order[i] * 4;
      for (int ty = q[1]; ty <= q[3]; ++ty)
        for (int tx = q[0]; tx <= q[2]; ++tx) cnt[ty * geo.tiles_x + tx]++;
    }
  }
  int64_t total = 0;
  for (int64_t f = 0; f < frames; ++f) {
    int64_t* o = offsets + f * (T + 1);
    o[0] = total;
    for (int t = 1; t <= T; ++t) o[t] += o[t - 1];
    total = o[T];
  }
  ids_t = torch::empty({total}, torch::kInt32);
  int32_t* ids = ids_t.data_ptr<int32_t>();
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t f = 0; f < frames; ++f) {
    std::vector<int64_t> cursor(offsets + f * (T + 1), offsets + f * (T + 1) + T);
    const int32_t* r = rects + f * n * 4;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t g = order[i];
      const int32_t* q = r + g * 4;
      for (int ty = q[1]; ty <= q[3]; ++ty)
        for (int tx = q[0]; tx <= q[2]; ++tx) ids[cursor[ty * geo.tiles_x + tx]++] = static_cast<int32_t>(g);
    }
  }
}

}  // namespace

// Returns (features [F,H,W,K], final transmittance [F,H,W], n_contrib [F,H,W] int32,
//          tile offsets [F,T+1] int64, tile ids [P] int32).
std::vector<torch::Tensor> forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                   torch::Tensor features, torch::Tensor rects, torch::Tensor order,
                                   int64_t width, int64_t height, int64_t tile, int64_t nthreads) {
  TORCH_CHECK(means2d.dtype() == torch::kFloat32 && conics.dtype() == torch::kFloat32, "float32 expected");
  TORCH_CHECK(rects.dtype() == torch::kInt32 && order.dtype() == torch::kInt64, "int32 rects, int64 order");
  means2d = means2d.contiguous(); conics = conics.contiguous(); opacities = opacities.contiguous();
  features = features.contiguous(); rects = rects.contiguous(); order = order.contiguous();
  const int64_t F = opacities.size(0), N = opacities.size(1), K = features.size(2);
  Geometry geo{(int)width, (int)height, (int)tile, (int)((width + tile - 1) / tile), (int)((height + tile - 1) / tile), 0};
  geo.n_tiles = geo.tiles_x * geo.tiles_y;
  const int nt = std::max<int64_t>(1, nthreads);
  torch::Tensor offsets_t, ids_t;
  bin_tiles(rects.data_ptr<int32_t>(), order.data_ptr<int64_t>(), order.size(0), N, F, geo, nt, offsets_t, ids_t);

  auto out = torch::zeros({F, height, width, K}, torch::kFloat32);
  auto tfinal = torch::ones({F, height, width}, torch::kFloat32);
  auto ncontrib = torch::zeros({F, height, width}, torch::kInt32);
  const float* m2 = means2d.data_ptr<float>();
  const float* con = conics.data_ptr<float>();
  const float* opa = opacities.data_ptr<float>();
  const float* fea = features.data_ptr<float>();
  const int64_t* offs = offsets_t.data_ptr<int64_t>();
  const int32_t* ids = ids_t.data_ptr<int32_t>();
  float* o_ptr = out.data_ptr<float>();
  float* t_ptr = tfinal.data_ptr<float>();
  int32_t* n_ptr = ncontrib.data_ptr<int32_t>();
  const int64_t items = F * geo.n_tiles;

#pragma omp parallel num_threads(nt)
  {
    TileData d;
    std::vector<float> acc(K);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t f = item / geo.n_tiles;
      const int t = static_cast<int>(item % geo.n_tiles);
      const int64_t s = offs[f * (geo.n_tiles + 1) + t], e = offs[f * (geo.n_tiles + 1) + t + 1];
      const int n = static_cast<int>(e - s);
      if (n == 0) continue;
      d.gather(n, (int)K, ids + s, m2, con + f * N * 3, opa + f * N, fea + f * N * K);
      const int x0 = (t % geo.tiles_x) * geo.tile, y0 = (t / geo.tiles_x) * geo.tile;
      const int x1 = std::min(x0 + geo.tile, geo.width), y1 = std::min(y0 + geo.tile, geo.height);
      for (int y = y0; y < y1; ++y) {
        for (int x = x0; x < x1; ++x) {
          const float px = x + 0.5f, py = y + 0.5f;
          float T = 1.0f;
          int last = 0;
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int j = 0; j < n; ++j) {
            float dx, dy;
            const float power = power_of(d, j, px, py, dx, dy);
            if (power < 0.0f || power > d.thr[j]) continue;
            const float alpha = std::min(kAlphaMax, d.op[j] * std::exp(-power));
            if (alpha < kAlphaMin) continue;
            const float next_t = T * (1.0f - alpha);
            if (next_t < kTMin) break;
            const float w = alpha * T;
            const float* fj = d.feat.data() + static_cast<size_t>(j) * K;
            for (int64_t c = 0; c < K; ++c) acc[c] += w * fj[c];
            T = next_t;
            last = j + 1;
          }
          const int64_t pix = (f * height + y) * width + x;
          for (int64_t c = 0; c < K; ++c) o_ptr[pix * K + c] = acc[c];
          t_ptr[pix] = T;
          n_ptr[pix] = last;
        }
      }
    }
  }
  return {out, tfinal, ncontrib, offsets_t, ids_t};
}

// Returns gradients (means2d [N,2], conics [F,N,3], opacities [F,N], features [F,N,K]).
std::vector<torch::Tensor> backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                    torch::Tensor features, torch::Tensor offsets_t, torch::Tensor ids_t,
                                    torch::Tensor tfinal, torch::Tensor ncontrib, torch::Tensor grad_out,
                                    torch::Tensor grad_alpha, int64_t width, int64_t height, int64_t tile,
                                    int64_t nthreads) {
  means2d = means2d.contiguous(); conics = conics.contiguous(); opacities = opacities.contiguous();
  features = features.contiguous(); grad_out = grad_out.contiguous(); grad_alpha = grad_alpha.contiguous();
  const int64_t F = opacities.size(0), N = opacities.size(1), K = features.size(2);
  Geometry geo{(int)width, (int)height, (int)tile, (int)((width + tile - 1) / tile), (int)((height + tile - 1) / tile), 0};
  geo.n_tiles = geo.tiles_x * geo.tiles_y;
  const int nt = std::max<int64_t>(1, nthreads);
  // Per-thread gradient buffers, summed at the end: deterministic for a fixed thread count, no atomics.
  auto g_m = torch::zeros({nt, N, 2}, torch::kFloat32);
  auto g_c = torch::zeros({nt, F, N, 3}, torch::kFloat32);
  auto g_o = torch::zeros({nt, F, N}, torch::kFloat32);
  auto g_f = torch::zeros({nt, F, N, K}, torch::kFloat32);
  const float* m2 = means2d.data_ptr<float>();
  const float* con = conics.data_ptr<float>();
  const float* opa = opacities.data_ptr<float>();
  const float* fea = features.data_ptr<float>();
  const int64_t* offs = offsets_t.data_ptr<int64_t>();
  const int32_t* ids = ids_t.data_ptr<int32_t>();
  const float* tf = tfinal.data_ptr<float>();
  const int32_t* nc = ncontrib.data_ptr<int32_t>();
  const float* go = grad_out.data_ptr<float>();
  const float* ga = grad_alpha.data_ptr<float>();
  const int64_t items = F * geo.n_tiles;

#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    float* gm_t = g_m.data_ptr<float>() + tid * N * 2;
    float* gc_t = g_c.data_ptr<float>() + tid * F * N * 3;
    float* go_t = g_o.data_ptr<float>() + tid * F * N;
    float* gf_t = g_f.data_ptr<float>() + tid * F * N * K;
    TileData d;
    std::vector<float> S(K), lm, lc, lo, lf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t f = item / geo.n_tiles;
      const int t = static_cast<int>(item % geo.n_tiles);
      const int64_t s = offs[f * (geo.n_tiles + 1) + t], e = offs[f * (geo.n_tiles + 1) + t + 1];
      const int n = static_cast<int>(e - s);
      if (n == 0) continue;
      d.gather(n, (int)K, ids + s, m2, con + f * N * 3, opa + f * N, fea + f * N * K);
      lm.assign(static_cast<size_t>(n) * 2, 0.f);
      lc.assign(static_cast<size_t>(n) * 3, 0.f);
      lo.assign(n, 0.f);
      lf.assign(static_cast<size_t>(n) * K, 0.f);
      const int x0 = (t % geo.tiles_x) * geo.tile, y0 = (t / geo.tiles_x) * geo.tile;
      const int x1 = std::min(x0 + geo.tile, geo.width), y1 = std::min(y0 + geo.tile, geo.height);
      int max_last = 0;
      for (int y = y0; y < y1; ++y) {
        for (int x = x0; x < x1; ++x) {
          const int64_t pix = (f * height + y) * width + x;
          const int last = nc[pix];
          if (last == 0) continue;
          max_last = std::max(max_last, last);
          const float px = x + 0.5f, py = y + 0.5f;
          const float t_final = tf[pix];
          const float* g = go + pix * K;
          const float g_alpha = ga[pix];
          float T = t_final;
          std::fill(S.begin(), S.end(), 0.0f);
          for (int j = last - 1; j >= 0; --j) {
            float dx, dy;
            const float power = power_of(d, j, px, py, dx, dy);
            if (power < 0.0f || power > d.thr[j]) continue;
            const float vis = std::exp(-power);
            const float raw = d.op[j] * vis;
            const float alpha = std::min(kAlphaMax, raw);
            if (alpha < kAlphaMin) continue;
            const float ra = 1.0f / (1.0f - alpha);
            T *= ra;
            const float w = alpha * T;
            const float* fj = d.feat.data() + static_cast<size_t>(j) * K;
            float* lfj = lf.data() + static_cast<size_t>(j) * K;
            float v_alpha = 0.0f;
            for (int64_t c = 0; c < K; ++c) {
              lfj[c] += w * g[c];
              v_alpha += (fj[c] * T - S[c] * ra) * g[c];
              S[c] += w * fj[c];
            }
            v_alpha += g_alpha * t_final * ra;
            if (raw <= kAlphaMax) {
              lo[j] += vis * v_alpha;
              const float v_power = -raw * v_alpha;
              lc[3 * j] += 0.5f * dx * dx * v_power;
              lc[3 * j + 1] += dx * dy * v_power;
              lc[3 * j + 2] += 0.5f * dy * dy * v_power;
              lm[2 * j] += (d.ca[j] * dx + d.cb[j] * dy) * v_power;
              lm[2 * j + 1] += (d.cb[j] * dx + d.cc[j] * dy) * v_power;
            }
          }
        }
      }
      for (int j = 0; j < max_last; ++j) {
        const int64_t g = ids[s + j];
        gm_t[2 * g] += lm[2 * j];
        gm_t[2 * g + 1] += lm[2 * j + 1];
        const int64_t fg = f * N + g;
        for (int c = 0; c < 3; ++c) gc_t[3 * fg + c] += lc[3 * j + c];
        go_t[fg] += lo[j];
        for (int64_t c = 0; c < K; ++c) gf_t[fg * K + c] += lf[static_cast<size_t>(j) * K + c];
      }
    }
  }
  return {g_m.sum(0), g_c.sum(0), g_o.sum(0), g_f.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "defocus GS rasteriser forward (CPU)");
  m.def("backward", &backward, "defocus GS rasteriser backward (CPU)");
}
