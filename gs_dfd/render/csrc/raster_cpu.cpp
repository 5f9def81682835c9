// CPU tile rasteriser for defocus-aware 3D Gaussian splatting: forward and analytic backward.
//
// The algorithm is that of 3DGS (Kerbl et al. 2023) as implemented by gsplat's CUDA
// kernels (Ye et al. 2024): Gaussians are binned into 16x16 tiles in depth order, every
// pixel composites its tile's list front to back and stops once its transmittance would
// fall below 1e-4, and the backward pass walks the same list back to front, recovering
// the transmittance by division instead of storing it.
//
// CPU mapping: one OpenMP task is one (frame, tile). Within a tile, a "group" of L adjacent
// pixels of one row is one SIMD vector (GCC vector extensions; L = 16 with AVX-512, else 8),
// as a CUDA warp's lanes are. The tile is traversed Gaussian-major: each list entry, in depth
// order, updates only the groups of the rows its footprint box covers, so every pixel still
// composites its Gaussians front to back while the groups' state (transmittance, accumulators)
// stays in L1 and rows outside the footprint cost nothing. Lanes drop out when they saturate;
// a tile stops when all its pixels have. Gradients of one Gaussian are summed in registers
// over the rows it covers, then added to a per-thread buffer (no atomics). The splat exponent
// is computed with the same operations and roundings as raster_torch.py (see splat_power) so
// skip / early-stop decisions agree with the reference. The EWA projection (projection.py) is
// ported here too, fused forward and backward, one pass per Gaussian.
#include <torch/extension.h>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// GS_DFD_CPU_PROFILE=1 prints per-phase wall times (development aid).
struct PhaseTimer {
  bool on = std::getenv("GS_DFD_CPU_PROFILE") != nullptr;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  void lap(const char* what) {
    if (!on) return;
    const auto t1 = std::chrono::steady_clock::now();
    std::fprintf(stderr, "  %-10s %8.2f ms\n", what, std::chrono::duration<double, std::milli>(t1 - t0).count());
    t0 = t1;
  }
};

#if defined(__AVX512F__)
constexpr int L = 16;
#else
constexpr int L = 8;
#endif
typedef float vf __attribute__((vector_size(L * 4)));
typedef int32_t vi __attribute__((vector_size(L * 4)));

constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kAlphaMax = 0.99f;
constexpr float kTMin = 1e-4f;
// Per-element loops are cheap (tens of ns per Gaussian): a parallel region only pays off for
// large inputs, and on a busy machine every region costs a scheduler wake-up of each thread.
inline bool worth_threads(int64_t work) { return work >= 20000; }

constexpr float kBoxPad = 1e-2f;  // px: footprint boxes are exact bounds; pad against rounding
constexpr float kMaxExtend = 3.33f;  // gsplat: footprint bound in sigmas

inline vf splat(float s) { return vf{} + s; }

// Explicit fused multiply-add (used where the compiler might not contract on its own).
inline vf fmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                              reinterpret_cast<__m512>(c)));
#elif defined(__FMA__) && defined(__AVX2__)
  return reinterpret_cast<vf>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                              reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}
inline vi splati(int32_t s) { return vi{} + s; }

// Forces v to be rounded to float here: stops the compiler from fusing it into a following add.
inline vf rounded(vf v) {
  asm("" : "+v"(v));
  return v;
}

// The splat exponent q/2 with exactly the reference's operations and roundings (no FMA), so that
// alphas within a few ulps of 1/255 are skipped or kept exactly as in raster_torch.py.
inline vf splat_power(vf ca, vf cb, vf dx, vf cdy, float dy) {
  const vf t = rounded((ca * dx) * dx) + cdy;
  return rounded(splat(0.5f) * t) + rounded((cb * dx) * dy);
}

inline bool any(vi m) {
#if defined(__AVX512F__)
  const __m512i x = reinterpret_cast<__m512i>(m);
  return _mm512_test_epi32_mask(x, x) != 0;
#elif defined(__AVX2__)
  const __m256i x = reinterpret_cast<__m256i>(m);
  return !_mm256_testz_si256(x, x);
#else
  int32_t r = 0;
  for (int i = 0; i < L; ++i) r |= m[i];
  return r != 0;
#endif
}

inline float hsum(vf v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
#elif defined(__AVX2__)
  const __m256 x = reinterpret_cast<__m256>(v);
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
#else
  float s = 0.f;
  for (int i = 0; i < L; ++i) s += v[i];
  return s;
#endif
}

// exp(x) on [-20, 0] (Cephes expf, ~1 ulp): alpha only needs it on [-ln 255, 0]. The clamp keeps
// masked-off lanes (far from the splat) out of denormals, which cost ~100 cycles per operation.
inline vf vexp(vf x) {
  x = x < splat(-20.0f) ? splat(-20.0f) : x;
  x = x > splat(0.0f) ? splat(0.0f) : x;
  const vf t = fmadd(x, splat(1.44269504088896341f), splat(-0.5f));
  const vi n = __builtin_convertvector(t, vi);  // truncation: round(x log2 e) for x <= 0
  const vf nf = __builtin_convertvector(n, vf);
  vf r = fmadd(nf, splat(-0.693359375f), x);
  r = fmadd(nf, splat(2.12194440e-4f), r);
  vf p = splat(1.9875691500e-4f);
  p = fmadd(p, r, splat(1.3981999507e-3f));
  p = fmadd(p, r, splat(8.3334519073e-3f));
  p = fmadd(p, r, splat(4.1665795894e-2f));
  p = fmadd(p, r, splat(1.6666665459e-1f));
  p = fmadd(p, r, splat(5.0000001201e-1f));
  p = fmadd(p, r * r, r + splat(1.0f));
  const vi bits = (n + splati(127)) << 23;
  return p * reinterpret_cast<vf>(bits);
}

struct Geometry {
  int width, height, tile, tiles_x, tiles_y, n_tiles;
};

constexpr int kRec = 9;  // per-(frame, Gaussian) record: gx gy ca cb cc op thr rx ry, then K features

// One contiguous record per (frame, visible Gaussian), in the spatial order `spatial` (rank ->
// Gaussian id), so a tile's gather touches one cache line per entry and nearby tiles nearby lines.
torch::Tensor pack_records(const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& opacities,
                           const torch::Tensor& radii, const torch::Tensor& features, const torch::Tensor& spatial,
                           int nthreads) {
  const int64_t F = opacities.size(0), N = opacities.size(1), K = features.size(2), M = spatial.size(0);
  const int64_t R = kRec + K;
  auto rec_t = torch::empty({F, M, R}, torch::kFloat32);
  float* rec = rec_t.data_ptr<float>();
  const float* m2 = means2d.data_ptr<float>();
  const float* con = conics.data_ptr<float>();
  const float* opa = opacities.data_ptr<float>();
  const float* rad = radii.data_ptr<float>();
  const float* fea = features.data_ptr<float>();
  const int32_t* sp = spatial.data_ptr<int32_t>();
#pragma omp parallel for num_threads(nthreads) schedule(static) if(worth_threads(F * M))
  for (int64_t k = 0; k < F * M; ++k) {
    const int64_t f = k / M;
    const int64_t g = sp[k % M];
    const int64_t i = f * N + g;
    float* r = rec + k * R;
    r[0] = m2[2 * g];
    r[1] = m2[2 * g + 1];
    r[2] = con[3 * i];
    r[3] = con[3 * i + 1];
    r[4] = con[3 * i + 2];
    r[5] = opa[i];
    // log(255 o) + margin: power above it means alpha < 1/255 for certain (cheap reject before exp).
    r[6] = opa[i] > 0.f ? std::log(opa[i] * 255.0f) + 1e-3f : -1.0f;
    r[7] = rad[2 * i] + kBoxPad;
    r[8] = rad[2 * i + 1] + kBoxPad;
    for (int64_t c = 0; c < K; ++c) r[kRec + c] = fea[i * K + c];
  }
  return rec_t;
}

// Relabels the visible Gaussians (depth `order`) by the tile of their footprint's top-left corner
// (first frame where they are on screen): rank -> Gaussian id, and Gaussian id -> rank.
torch::Tensor spatial_order(const int32_t* rects, const int64_t* order, int64_t m, int64_t n, int64_t frames,
                            int tiles_x, int n_tiles, std::vector<int32_t>& rank) {
  std::vector<int32_t> key(m);
  std::vector<int64_t> count(n_tiles + 1, 0);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t g = order[i];
    int32_t k = 0;
    for (int64_t f = 0; f < frames; ++f) {
      const int32_t* q = rects + (f * n + g) * 4;
      if (q[2] >= q[0] && q[3] >= q[1]) {
        k = q[1] * tiles_x + q[0];
        break;
      }
    }
    key[i] = k;
    count[k + 1]++;
  }
  for (int t = 0; t < n_tiles; ++t) count[t + 1] += count[t];
  auto spatial = torch::empty({m}, torch::kInt32);
  int32_t* sp = spatial.data_ptr<int32_t>();
  rank.assign(n, -1);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t r = count[key[i]]++;
    sp[r] = static_cast<int32_t>(order[i]);
    rank[order[i]] = static_cast<int32_t>(r);
  }
  return spatial;
}

// Per-tile Gaussian data gathered into contiguous arrays (structure of arrays).
struct TileData {
  std::vector<float> gx, gy, ca, cb, cc, op, thr, y0, y1, feat;
  void gather(int n, int k, const int32_t* ids, const float* rec) {
    for (auto* v : {&gx, &gy, &ca, &cb, &cc, &op, &thr, &y0, &y1}) v->resize(n);
    feat.resize(static_cast<size_t>(n) * k);
    const int64_t R = kRec + k;
    for (int j = 0; j < n; ++j) {
      if (j + 8 < n) __builtin_prefetch(rec + static_cast<int64_t>(ids[j + 8]) * R);
      const float* r = rec + static_cast<int64_t>(ids[j]) * R;
      gx[j] = r[0]; gy[j] = r[1]; ca[j] = r[2]; cb[j] = r[3]; cc[j] = r[4]; op[j] = r[5]; thr[j] = r[6];
      y0[j] = r[1] - r[8]; y1[j] = r[1] + r[8];  // rows covered; x needs no test (see forward_tile)
      for (int c = 0; c < k; ++c) feat[static_cast<size_t>(j) * k + c] = r[kRec + c];
    }
  }
};

inline vf lane_x(int gx0) {
  vf px;
  for (int i = 0; i < L; ++i) px[i] = static_cast<float>(gx0 + i) + 0.5f;
  return px;
}

inline vi lanes_inside(int gx0, int x1) {
  vi live;
  for (int i = 0; i < L; ++i) live[i] = (gx0 + i < x1) ? -1 : 0;
  return live;
}

inline vf recip(vf x) {
#if defined(__AVX512F__)
  const __m512 v = reinterpret_cast<__m512>(x);
  __m512 r = _mm512_rcp14_ps(v);  // 14 bits, one Newton step -> ~28 bits
  r = _mm512_mul_ps(r, _mm512_sub_ps(_mm512_set1_ps(2.0f), _mm512_mul_ps(v, r)));
  return reinterpret_cast<vf>(r);
#else
  return splat(1.0f) / x;
#endif
}

// Tile lists of every frame: counting sort by tile of the depth-ordered Gaussians.
void bin_tiles(const int32_t* rects, const int64_t* order, int64_t m, int64_t n, int64_t frames,
               const Geometry& geo, int nthreads, const std::vector<int32_t>& rank, torch::Tensor& offsets_t,
               torch::Tensor& ids_t) {
  const int T = geo.n_tiles;
  offsets_t = torch::zeros({frames, T + 1}, torch::kInt64);
  int64_t* offsets = offsets_t.data_ptr<int64_t>();
#pragma omp parallel for num_threads(nthreads) schedule(static) if(worth_threads(frames * m * 4))
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
#pragma omp parallel for num_threads(nthreads) schedule(static) if(worth_threads(frames * m * 4))
  for (int64_t f = 0; f < frames; ++f) {
    std::vector<int64_t> cursor(offsets + f * (T + 1), offsets + f * (T + 1) + T);
    const int32_t* r = rects + f * n * 4;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t g = order[i];
      const int32_t* q = r + g * 4;
      for (int ty = q[1]; ty <= q[3]; ++ty)
        for (int tx = q[0]; tx <= q[2]; ++tx) ids[cursor[ty * geo.tiles_x + tx]++] = rank[g];
    }
  }
}

Geometry make_geometry(int64_t width, int64_t height, int64_t tile) {
  TORCH_CHECK(tile % L == 0 && tile <= 64, "tile size must be a multiple of the SIMD width ", L, " and <= 64");
  Geometry geo{(int)width, (int)height, (int)tile, (int)((width + tile - 1) / tile), (int)((height + tile - 1) / tile), 0};
  geo.n_tiles = geo.tiles_x * geo.tiles_y;
  return geo;
}

constexpr int kMaxChannels = 32;
constexpr int kMaxGroupsPerRow = 64 / L;  // tiles up to 64 px wide

struct Frame {
  const float* rec;  // [N, R] records of this frame
  int64_t f;
};

// Rows of a tile covered by a footprint box [y0, y1] (pixel centres at y + 0.5).
inline void row_range(float y0, float y1, int ty0, int ty1, int& r0, int& r1) {
  const float lo = std::max(y0 - 0.5f, static_cast<float>(ty0) - 1.0f);
  const float hi = std::min(y1 - 0.5f, static_cast<float>(ty1));
  r0 = std::max(ty0, static_cast<int>(std::ceil(lo)));
  r1 = std::min(ty1 - 1, static_cast<int>(std::floor(hi)));
}

// Forward of one tile, Gaussian-major: each list entry updates only the pixel groups (L pixels of a
// row) of the rows its box covers; every group still sees its Gaussians in depth order, so this is
// the per-pixel front-to-back loop with the groups' state (transmittance, accumulators) kept in L1.
// KC > 0: channel count known at compile time.
template <int KC>
void forward_tile(const TileData& d, int n, int K_dyn, const Geometry& geo, int t, int64_t f, float* o_ptr,
                  float* t_ptr, int32_t* n_ptr) {
  const int K = KC > 0 ? KC : K_dyn;
  constexpr int KA = KC > 0 ? KC : kMaxChannels;
  struct Group { vf T; vi last; vi live; vf acc[KA]; };
  const int tx0 = (t % geo.tiles_x) * geo.tile, ty0 = (t / geo.tiles_x) * geo.tile;
  const int tx1 = std::min(tx0 + geo.tile, geo.width), ty1 = std::min(ty0 + geo.tile, geo.height);
  const int gpr = geo.tile / L;  // groups per row
  thread_local std::vector<Group> groups;
  groups.resize(static_cast<size_t>(geo.tile) * gpr);
  vf pxs[kMaxGroupsPerRow];
  for (int xg = 0; xg < gpr; ++xg) pxs[xg] = lane_x(tx0 + xg * L);
  int alive = 0;
  for (int y = ty0; y < ty1; ++y)
    for (int xg = 0; xg < gpr; ++xg) {
      Group& g = groups[(y - ty0) * gpr + xg];
      g.T = splat(1.0f);
      g.last = splati(0);
      g.live = lanes_inside(tx0 + xg * L, tx1);
      for (int c = 0; c < K; ++c) g.acc[c] = splat(0.0f);
      alive += any(g.live);
    }
  for (int j = 0; j < n && alive > 0; ++j) {
    int r0, r1;
    row_range(d.y0[j], d.y1[j], ty0, ty1, r0, r1);
    const vf ca = splat(d.ca[j]), cb = splat(d.cb[j]), thr = splat(d.thr[j]), op = splat(d.op[j]);
    const float* fj = d.feat.data() + static_cast<size_t>(j) * K;
    for (int y = r0; y <= r1; ++y) {
      const float dy = d.gy[j] - (static_cast<float>(y) + 0.5f);
      const vf cdy = splat((d.cc[j] * dy) * dy);
      for (int xg = 0; xg < gpr; ++xg) {
        Group& g = groups[(y - ty0) * gpr + xg];
        const vf dx = splat(d.gx[j]) - pxs[xg];
        const vf power = splat_power(ca, cb, dx, cdy, dy);
        vi msk = g.live & (power >= splat(0.0f)) & (power <= thr);
        if (!any(msk)) continue;
        vf alpha = op * vexp(-power);
        alpha = alpha > splat(kAlphaMax) ? splat(kAlphaMax) : alpha;
        msk &= alpha >= splat(kAlphaMin);
        const vf next_t = g.T * (splat(1.0f) - alpha);
        const vi stop = msk & (next_t < splat(kTMin));
        msk &= ~stop;
        const vf w = msk ? alpha * g.T : splat(0.0f);
        for (int c = 0; c < K; ++c) g.acc[c] = fmadd(w, splat(fj[c]), g.acc[c]);
        g.T = msk ? next_t : g.T;
        g.last = msk ? splati(j + 1) : g.last;
        if (any(stop)) {
          g.live &= ~stop;
          alive -= !any(g.live);
        }
      }
    }
  }
  for (int y = ty0; y < ty1; ++y)
    for (int xg = 0; xg < gpr; ++xg) {
      const Group& g = groups[(y - ty0) * gpr + xg];
      float tb[L], ab[KA][L];
      int32_t lb[L];
      std::memcpy(tb, &g.T, sizeof(tb));
      std::memcpy(lb, &g.last, sizeof(lb));
      for (int c = 0; c < K; ++c) std::memcpy(ab[c], &g.acc[c], sizeof(tb));
      const int gx0 = tx0 + xg * L;
      const int64_t row = (f * geo.height + y) * geo.width;
      for (int i = 0; i < L && gx0 + i < tx1; ++i) {
        const int64_t pix = row + gx0 + i;
        for (int c = 0; c < K; ++c) o_ptr[pix * K + c] = ab[c][i];
        t_ptr[pix] = tb[i];
        n_ptr[pix] = lb[i];
      }
    }
}

// Backward of one tile, Gaussian-major from back to front. Groups carry the recovered
// transmittance and the colour accumulated behind the current Gaussian; the Gaussian's
// gradient is summed in registers over the rows it covers, then added to the thread's buffer.
template <int KC>
void backward_tile(const TileData& d, int n, int K_dyn, const Geometry& geo, int t, int64_t f, const float* tf,
                   const int32_t* nc, const float* go, const float* ga, const int32_t* ids, int64_t n_slots,
                   float* g_t) {
  const int K = KC > 0 ? KC : K_dyn;
  constexpr int KA = KC > 0 ? KC : kMaxChannels;
  const int Q = 6 + K;
  struct Group { vf T; vf gat; vi last; vf S[KA]; vf G[KA]; };
  const int tx0 = (t % geo.tiles_x) * geo.tile, ty0 = (t / geo.tiles_x) * geo.tile;
  const int tx1 = std::min(tx0 + geo.tile, geo.width), ty1 = std::min(ty0 + geo.tile, geo.height);
  const int gpr = geo.tile / L;
  thread_local std::vector<Group> groups;
  groups.resize(static_cast<size_t>(geo.tile) * gpr);
  vf pxs[kMaxGroupsPerRow];
  for (int xg = 0; xg < gpr; ++xg) pxs[xg] = lane_x(tx0 + xg * L);
  int jmax = 0;
  for (int y = ty0; y < ty1; ++y)
    for (int xg = 0; xg < gpr; ++xg) {
      Group& g = groups[(y - ty0) * gpr + xg];
      const int gx0 = tx0 + xg * L;
      const int64_t row = (f * geo.height + y) * geo.width;
      float tb[L], gab[L], gb[KA][L];
      int32_t lb[L];
      for (int i = 0; i < L; ++i) {
        const bool in = gx0 + i < tx1;
        const int64_t pix = row + gx0 + i;
        lb[i] = in ? nc[pix] : 0;
        jmax = std::max(jmax, static_cast<int>(lb[i]));
        tb[i] = in ? tf[pix] : 1.0f;
        gab[i] = in ? ga[pix] : 0.0f;
        for (int c = 0; c < K; ++c) gb[c][i] = in ? go[pix * K + c] : 0.0f;
      }
      std::memcpy(&g.T, tb, sizeof(tb));
      std::memcpy(&g.last, lb, sizeof(lb));
      vf gav;
      std::memcpy(&gav, gab, sizeof(gab));
      g.gat = gav * g.T;  // d alpha_out / d alpha_j = T_final / (1 - alpha_j)
      for (int c = 0; c < K; ++c) {
        std::memcpy(&g.G[c], gb[c], sizeof(tb));
        g.S[c] = splat(0.0f);
      }
    }
  for (int j = jmax - 1; j >= 0; --j) {
    int r0, r1;
    row_range(d.y0[j], d.y1[j], ty0, ty1, r0, r1);
    const vf ca = splat(d.ca[j]), cb = splat(d.cb[j]), thr = splat(d.thr[j]), op = splat(d.op[j]);
    const float* fj = d.feat.data() + static_cast<size_t>(j) * K;
    vf a[6 + KA];
    for (int q = 0; q < Q; ++q) a[q] = splat(0.0f);
    bool touched = false;
    const vi jv = splati(j);
    for (int y = r0; y <= r1; ++y) {
      const float dy = d.gy[j] - (static_cast<float>(y) + 0.5f);
      const vf cdy = splat((d.cc[j] * dy) * dy);
      for (int xg = 0; xg < gpr; ++xg) {
        Group& g = groups[(y - ty0) * gpr + xg];
        const vf dx = splat(d.gx[j]) - pxs[xg];
        const vf power = splat_power(ca, cb, dx, cdy, dy);
        vi msk = (jv < g.last) & (power >= splat(0.0f)) & (power <= thr);
        if (!any(msk)) continue;
        const vf vis = vexp(-power);
        const vf raw = op * vis;
        vf alpha = raw > splat(kAlphaMax) ? splat(kAlphaMax) : raw;
        msk &= alpha >= splat(kAlphaMin);
        alpha = msk ? alpha : splat(0.0f);
        const vf ra = recip(splat(1.0f) - alpha);
        const vf T = msk ? g.T * ra : g.T;
        g.T = T;
        const vf w = alpha * T;
        vf v_alpha = g.gat * ra;
        for (int c = 0; c < K; ++c) {
          a[6 + c] = fmadd(w, g.G[c], a[6 + c]);
          v_alpha = fmadd(fmadd(splat(fj[c]), T, -(g.S[c] * ra)), g.G[c], v_alpha);
          g.S[c] = fmadd(w, splat(fj[c]), g.S[c]);
        }
        const vi mo = msk & (raw <= splat(kAlphaMax));
        const vf v_power = mo ? -raw * v_alpha : splat(0.0f);
        a[5] = mo ? fmadd(vis, v_alpha, a[5]) : a[5];
        const vf dxp = dx * v_power;
        a[2] = fmadd(splat(0.5f) * dx, dxp, a[2]);
        a[3] = fmadd(dxp, splat(dy), a[3]);
        a[4] = fmadd(v_power, splat(0.5f * dy * dy), a[4]);
        a[0] = fmadd(ca, dxp, fmadd(v_power, splat(d.cb[j] * dy), a[0]));
        a[1] = fmadd(cb, dxp, fmadd(v_power, splat(d.cc[j] * dy), a[1]));
        touched = true;
      }
    }
    if (touched) {
      float* dst = g_t + (f * n_slots + ids[j]) * Q;
      for (int q = 0; q < Q; ++q) dst[q] += hsum(a[q]);
    }
  }
}


// ---------------------------------------------------------------------------------------------
// EWA projection (Zwicker et al. 2001) of every Gaussian, fused forward and analytic backward.
// Same formulas, clamp and culling as projection.py (the reference), one pass per Gaussian.

struct Cam {
  float r[3][3], t[3];
  float fx, fy, cx, cy, lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg, near_plane, far_plane;
};

Cam make_cam(const torch::Tensor& w2c, double fx, double fy, double cx, double cy, int64_t width, int64_t height,
             double near_plane, double far_plane) {
  auto w = w2c.to(torch::kFloat64).contiguous();
  const double* p = w.data_ptr<double>();
  Cam c;
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 3; ++k) c.r[i][k] = static_cast<float>(p[4 * i + k]);
    c.t[i] = static_cast<float>(p[4 * i + 3]);
  }
  c.fx = fx; c.fy = fy; c.cx = cx; c.cy = cy;
  const double tan_fovx = 0.5 * width / fx, tan_fovy = 0.5 * height / fy;
  c.lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx;
  c.lim_x_neg = cx / fx + 0.3 * tan_fovx;
  c.lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy;
  c.lim_y_neg = cy / fy + 0.3 * tan_fovy;
  c.near_plane = near_plane; c.far_plane = far_plane;
  return c;
}

struct ProjLocal {
  float x, y, z, rz, ux, uy, jx, jy;
  bool cx_in, cy_in;  // view direction inside the Jacobian clamp
  float qn[4], qnorm;
  float R[3][3], M[3][3], A[3], B[3], P[3], Qv[3];
};

inline bool project_one(const Cam& c, const float* m, const float* q, const float* s, ProjLocal& L) {
  L.x = c.r[0][0] * m[0] + c.r[0][1] * m[1] + c.r[0][2] * m[2] + c.t[0];
  L.y = c.r[1][0] * m[0] + c.r[1][1] * m[1] + c.r[1][2] * m[2] + c.t[1];
  L.z = c.r[2][0] * m[0] + c.r[2][1] * m[1] + c.r[2][2] * m[2] + c.t[2];
  const bool valid = L.z > c.near_plane && L.z < c.far_plane;
  const float zs = valid ? L.z : 1.0f;
  L.rz = 1.0f / zs;
  const float u = L.x * L.rz, v = L.y * L.rz;
  L.cx_in = u >= -c.lim_x_neg && u <= c.lim_x_pos;
  L.cy_in = v >= -c.lim_y_neg && v <= c.lim_y_pos;
  L.ux = std::min(std::max(u, -c.lim_x_neg), c.lim_x_pos);
  L.uy = std::min(std::max(v, -c.lim_y_neg), c.lim_y_pos);
  L.jx = c.fx * L.rz;
  L.jy = c.fy * L.rz;
  for (int k = 0; k < 3; ++k) {
    L.A[k] = L.jx * (c.r[0][k] - L.ux * c.r[2][k]);
    L.B[k] = L.jy * (c.r[1][k] - L.uy * c.r[2][k]);
  }
  const float n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
  const float inv = 1.0f / std::sqrt(std::max(n2, 1e-24f));
  L.qnorm = inv;
  for (int i = 0; i < 4; ++i) L.qn[i] = q[i] * inv;
  const float w = L.qn[0], x = L.qn[1], y = L.qn[2], z = L.qn[3];
  L.R[0][0] = 1 - 2 * (y * y + z * z); L.R[0][1] = 2 * (x * y - w * z); L.R[0][2] = 2 * (x * z + w * y);
  L.R[1][0] = 2 * (x * y + w * z); L.R[1][1] = 1 - 2 * (x * x + z * z); L.R[1][2] = 2 * (y * z - w * x);
  L.R[2][0] = 2 * (x * z - w * y); L.R[2][1] = 2 * (y * z + w * x); L.R[2][2] = 1 - 2 * (x * x + y * y);
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < 3; ++i) L.M[k][i] = L.R[k][i] * s[i];
  for (int i = 0; i < 3; ++i) {
    L.P[i] = L.A[0] * L.M[0][i] + L.A[1] * L.M[1][i] + L.A[2] * L.M[2][i];
    L.Qv[i] = L.B[0] * L.M[0][i] + L.B[1] * L.M[1][i] + L.B[2] * L.M[2][i];
  }
  return valid;
}

}  // namespace

std::vector<torch::Tensor> project_forward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                           torch::Tensor w2c, double fx, double fy, double cx, double cy,
                                           int64_t width, int64_t height, double near_plane, double far_plane,
                                           int64_t nthreads) {
  TORCH_CHECK(means.dtype() == torch::kFloat32, "float32 expected");
  means = means.contiguous(); quats = quats.contiguous(); scales = scales.contiguous();
  const int64_t N = means.size(0);
  const Cam c = make_cam(w2c, fx, fy, cx, cy, width, height, near_plane, far_plane);
  auto means2d = torch::empty({N, 2}, torch::kFloat32);
  auto cov2d = torch::empty({N, 3}, torch::kFloat32);
  auto depths = torch::empty({N}, torch::kFloat32);
  auto valid = torch::empty({N}, torch::kBool);
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  float* o2 = means2d.data_ptr<float>();
  float* oc = cov2d.data_ptr<float>();
  float* od = depths.data_ptr<float>();
  bool* ov = valid.data_ptr<bool>();
#pragma omp parallel for num_threads(std::max<int64_t>(1, nthreads)) schedule(static) if(worth_threads(N))
  for (int64_t i = 0; i < N; ++i) {
    ProjLocal L;
    bool ok = project_one(c, m + 3 * i, q + 4 * i, s + 3 * i, L);
    const float* P = L.P;
    const float* Q = L.Qv;
    oc[3 * i] = P[0] * P[0] + P[1] * P[1] + P[2] * P[2];
    oc[3 * i + 1] = P[0] * Q[0] + P[1] * Q[1] + P[2] * Q[2];
    oc[3 * i + 2] = Q[0] * Q[0] + Q[1] * Q[1] + Q[2] * Q[2];
    o2[2 * i] = c.fx * L.x * L.rz + c.cx;
    o2[2 * i + 1] = c.fy * L.y * L.rz + c.cy;
    od[i] = L.z;
    ok = ok && std::isfinite(oc[3 * i]) && std::isfinite(oc[3 * i + 1]) && std::isfinite(oc[3 * i + 2]) &&
         std::isfinite(o2[2 * i]) && std::isfinite(o2[2 * i + 1]);
    ov[i] = ok;
  }
  return {means2d, cov2d, depths, valid};
}

// Gradients (means, quats, scales) of the projection given those of (means2d, cov2d, depths).
std::vector<torch::Tensor> project_backward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                            torch::Tensor w2c, double fx, double fy, double cx, double cy,
                                            int64_t width, int64_t height, double near_plane, double far_plane,
                                            torch::Tensor valid, torch::Tensor v_means2d, torch::Tensor v_cov2d,
                                            torch::Tensor v_depths, int64_t nthreads) {
  means = means.contiguous(); quats = quats.contiguous(); scales = scales.contiguous();
  v_means2d = v_means2d.contiguous(); v_cov2d = v_cov2d.contiguous(); v_depths = v_depths.contiguous();
  const int64_t N = means.size(0);
  const Cam c = make_cam(w2c, fx, fy, cx, cy, width, height, near_plane, far_plane);
  auto g_m = torch::zeros({N, 3}, torch::kFloat32);
  auto g_q = torch::zeros({N, 4}, torch::kFloat32);
  auto g_s = torch::zeros({N, 3}, torch::kFloat32);
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  const bool* vl = valid.data_ptr<bool>();
  const float* v2 = v_means2d.data_ptr<float>();
  const float* vc = v_cov2d.data_ptr<float>();
  const float* vd = v_depths.data_ptr<float>();
  float* gm = g_m.data_ptr<float>();
  float* gq = g_q.data_ptr<float>();
  float* gs = g_s.data_ptr<float>();
#pragma omp parallel for num_threads(std::max<int64_t>(1, nthreads)) schedule(static) if(worth_threads(N))
  for (int64_t i = 0; i < N; ++i) {
    ProjLocal L;
    const bool in_front = project_one(c, m + 3 * i, q + 4 * i, s + 3 * i, L);
    // Culled Gaussians: depth is still an output (the reference passes its gradient straight through).
    float v_x = 0.f, v_y = 0.f, v_z = vd[i];
    if (in_front) {
      const float c0 = vc[3 * i], c1 = vc[3 * i + 1], c2 = vc[3 * i + 2];
      float vP[3], vQ[3], vA[3] = {0, 0, 0}, vB[3] = {0, 0, 0}, vM[3][3];
      for (int k = 0; k < 3; ++k) {
        vP[k] = 2.f * c0 * L.P[k] + c1 * L.Qv[k];
        vQ[k] = c1 * L.P[k] + 2.f * c2 * L.Qv[k];
      }
      for (int k = 0; k < 3; ++k)
        for (int j = 0; j < 3; ++j) {
          vA[k] += vP[j] * L.M[k][j];
          vB[k] += vQ[j] * L.M[k][j];
          vM[k][j] = L.A[k] * vP[j] + L.B[k] * vQ[j];
        }
      // scales and rotation
      float vR[3][3];
      for (int j = 0; j < 3; ++j) {
        float acc = 0.f;
        for (int k = 0; k < 3; ++k) {
          acc += vM[k][j] * L.R[k][j];
          vR[k][j] = vM[k][j] * s[3 * i + j];
        }
        gs[3 * i + j] = acc;
      }
      const float w = L.qn[0], x = L.qn[1], y = L.qn[2], z = L.qn[3];
      float vqn[4];
      vqn[0] = 2.f * (-z * vR[0][1] + y * vR[0][2] + z * vR[1][0] - x * vR[1][2] - y * vR[2][0] + x * vR[2][1]);
      vqn[1] = 2.f * (y * vR[0][1] + z * vR[0][2] + y * vR[1][0] - 2.f * x * vR[1][1] - w * vR[1][2] + z * vR[2][0] +
                      w * vR[2][1] - 2.f * x * vR[2][2]);
      vqn[2] = 2.f * (-2.f * y * vR[0][0] + x * vR[0][1] + w * vR[0][2] + x * vR[1][0] + z * vR[1][2] - w * vR[2][0] +
                      z * vR[2][1] - 2.f * y * vR[2][2]);
      vqn[3] = 2.f * (-2.f * z * vR[0][0] - w * vR[0][1] + x * vR[0][2] + w * vR[1][0] - 2.f * z * vR[1][1] +
                      y * vR[1][2] + x * vR[2][0] + y * vR[2][1]);
      const float dot = vqn[0] * L.qn[0] + vqn[1] * L.qn[1] + vqn[2] * L.qn[2] + vqn[3] * L.qn[3];
      for (int k = 0; k < 4; ++k) gq[4 * i + k] = (vqn[k] - L.qn[k] * dot) * L.qnorm;
      // Jacobian rows: A_k = jx (r0k - ux r2k), B_k = jy (r1k - uy r2k), jx = fx rz, jy = fy rz.
      float v_rz = 0.f, v_ux = 0.f, v_uy = 0.f;
      for (int k = 0; k < 3; ++k) {
        v_rz += vA[k] * c.fx * (c.r[0][k] - L.ux * c.r[2][k]) + vB[k] * c.fy * (c.r[1][k] - L.uy * c.r[2][k]);
        v_ux -= vA[k] * L.jx * c.r[2][k];
        v_uy -= vB[k] * L.jy * c.r[2][k];
      }
      // means2d = (fx x rz + cx, fy y rz + cy)
      v_x += v2[2 * i] * c.fx * L.rz;
      v_y += v2[2 * i + 1] * c.fy * L.rz;
      v_rz += v2[2 * i] * c.fx * L.x + v2[2 * i + 1] * c.fy * L.y;
      if (L.cx_in) { v_x += v_ux * L.rz; v_rz += v_ux * L.x; }
      if (L.cy_in) { v_y += v_uy * L.rz; v_rz += v_uy * L.y; }
      v_z += -v_rz * L.rz * L.rz;
    }
    for (int k = 0; k < 3; ++k) gm[3 * i + k] = c.r[0][k] * v_x + c.r[1][k] * v_y + c.r[2][k] * v_z;
  }
  return {g_m, g_q, g_s};
}

// Tile ranges of every footprint box (same float formula as defocus.tile_rects) and the depth
// order of the Gaussians visible in any frame: a stable LSD radix sort on the float bits
// (positive floats order like their bit patterns), equal to torch.argsort(stable=True).
std::vector<torch::Tensor> prepare(torch::Tensor means2d, torch::Tensor radii, torch::Tensor depths, int64_t width,
                                   int64_t height, int64_t tile, int64_t nthreads) {
  means2d = means2d.contiguous(); radii = radii.contiguous(); depths = depths.contiguous();
  const int64_t F = radii.size(0), N = radii.size(1);
  const int tw = static_cast<int>((width + tile - 1) / tile), th = static_cast<int>((height + tile - 1) / tile);
  auto rects = torch::empty({F, N, 4}, torch::kInt32);
  std::vector<uint8_t> seen(N, 0);
  const float* m = means2d.data_ptr<float>();
  const float* r = radii.data_ptr<float>();
  int32_t* o = rects.data_ptr<int32_t>();
  const float ts = static_cast<float>(tile);
#pragma omp parallel for num_threads(std::max<int64_t>(1, nthreads)) schedule(static) if(worth_threads(N * F))
  for (int64_t g = 0; g < N; ++g) {
    uint8_t any_frame = 0;
    for (int64_t f = 0; f < F; ++f) {
      const float rx = r[(f * N + g) * 2], ry = r[(f * N + g) * 2 + 1];
      const float lx = std::floor((m[2 * g] - rx) / ts), ly = std::floor((m[2 * g + 1] - ry) / ts);
      const float hx = std::floor((m[2 * g] + rx) / ts), hy = std::floor((m[2 * g + 1] + ry) / ts);
      const float x0 = std::min(std::max(lx, 0.f), (float)tw), y0 = std::min(std::max(ly, 0.f), (float)th);
      const float x1 = std::min(std::max(hx, -1.f), (float)(tw - 1)), y1 = std::min(std::max(hy, -1.f), (float)(th - 1));
      const bool keep = rx > 0 && ry > 0 && x1 >= x0 && y1 >= y0 && std::isfinite(lx) && std::isfinite(ly) &&
                        std::isfinite(hx) && std::isfinite(hy);
      int32_t* q = o + (f * N + g) * 4;
      q[0] = keep ? (int32_t)x0 : 0; q[1] = keep ? (int32_t)y0 : 0;
      q[2] = keep ? (int32_t)x1 : -1; q[3] = keep ? (int32_t)y1 : -1;
      any_frame |= keep;
    }
    seen[g] = any_frame;
  }
  const float* z = depths.data_ptr<float>();
  std::vector<uint32_t> key, key2;
  std::vector<int64_t> idx, idx2;
  for (int64_t g = 0; g < N; ++g) {
    if (!seen[g]) continue;
    uint32_t b;
    std::memcpy(&b, &z[g], 4);
    key.push_back(b);  // visible Gaussians have z > near plane > 0
    idx.push_back(g);
  }
  const size_t M = idx.size();
  key2.resize(M); idx2.resize(M);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < M; ++i) count[((key[i] >> shift) & 255u) + 1]++;
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < M; ++i) {
      const size_t dst = count[(key[i] >> shift) & 255u]++;
      key2[dst] = key[i];
      idx2[dst] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
  auto order = torch::empty({static_cast<int64_t>(M)}, torch::kInt64);
  std::memcpy(order.data_ptr<int64_t>(), idx.data(), M * sizeof(int64_t));
  return {rects, order};
}

// Defocus dilation S' = S + (sigma^2 + eps) I, energy-conserving opacity and opacity-aware
// footprint: the fused port of defocus.dilate (same formulas), forward and backward.
std::vector<torch::Tensor> dilate_forward(torch::Tensor cov2d, torch::Tensor opacities, torch::Tensor sigma2,
                                          torch::Tensor valid, double eps, int64_t nthreads) {
  cov2d = cov2d.contiguous(); opacities = opacities.contiguous(); sigma2 = sigma2.contiguous();
  valid = valid.contiguous();
  const int64_t F = sigma2.size(0), N = sigma2.size(1);
  auto conics = torch::empty({F, N, 3}, torch::kFloat32);
  auto opac = torch::empty({F, N}, torch::kFloat32);
  auto radii = torch::empty({F, N, 2}, torch::kFloat32);
  const float* cv = cov2d.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();
  const float* s2 = sigma2.data_ptr<float>();
  const bool* vl = valid.data_ptr<bool>();
  float* oc = conics.data_ptr<float>();
  float* oo = opac.data_ptr<float>();
  float* orr = radii.data_ptr<float>();
  const float e = static_cast<float>(eps);
#pragma omp parallel for num_threads(std::max<int64_t>(1, nthreads)) schedule(static) if(worth_threads(F * N))
  for (int64_t i = 0; i < F * N; ++i) {
    const int64_t g = i % N;
    const float a = cv[3 * g], b = cv[3 * g + 1], c = cv[3 * g + 2];
    const float det_eps = (a + e) * (c + e) - b * b;
    const float d = s2[i] + e;
    const float a2 = a + d, c2 = c + d;
    const float det2 = a2 * c2 - b * b;
    const bool ok = vl[g] && det_eps > 0.f && det2 > 0.f;
    const float inv = 1.0f / (ok ? det2 : 1.0f);
    oc[3 * i] = c2 * inv;
    oc[3 * i + 1] = -b * inv;
    oc[3 * i + 2] = a2 * inv;
    const float o = ok ? op[g] * std::sqrt(det_eps * inv) : 0.0f;
    oo[i] = o;
    float rx = 0.f, ry = 0.f;
    if (ok && o >= kAlphaMin) {
      const float extend = std::min(kMaxExtend, std::sqrt(2.0f * std::log(o * 255.0f)));
      rx = extend * std::sqrt(std::max(a2, 0.f));
      ry = extend * std::sqrt(std::max(c2, 0.f));
      if (!std::isfinite(rx) || !std::isfinite(ry)) rx = ry = 0.f;
    }
    orr[2 * i] = rx;
    orr[2 * i + 1] = ry;
  }
  return {conics, opac, radii};
}

// Gradients (cov2d [N,3], opacities [N], sigma2 [F,N]) from those of (conics, opacities').
std::vector<torch::Tensor> dilate_backward(torch::Tensor cov2d, torch::Tensor opacities, torch::Tensor sigma2,
                                           torch::Tensor valid, double eps, torch::Tensor v_conics,
                                           torch::Tensor v_opac, int64_t nthreads) {
  cov2d = cov2d.contiguous(); opacities = opacities.contiguous(); sigma2 = sigma2.contiguous();
  valid = valid.contiguous(); v_conics = v_conics.contiguous(); v_opac = v_opac.contiguous();
  const int64_t F = sigma2.size(0), N = sigma2.size(1);
  auto g_cov = torch::zeros({N, 3}, torch::kFloat32);
  auto g_op = torch::zeros({N}, torch::kFloat32);
  auto g_s2 = torch::zeros({F, N}, torch::kFloat32);
  const float* cv = cov2d.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();
  const float* s2 = sigma2.data_ptr<float>();
  const bool* vl = valid.data_ptr<bool>();
  const float* vc = v_conics.data_ptr<float>();
  const float* vo = v_opac.data_ptr<float>();
  float* gc = g_cov.data_ptr<float>();
  float* go = g_op.data_ptr<float>();
  float* gs = g_s2.data_ptr<float>();
  const float e = static_cast<float>(eps);
#pragma omp parallel for num_threads(std::max<int64_t>(1, nthreads)) schedule(static) if(worth_threads(F * N))
  for (int64_t g = 0; g < N; ++g) {
    const float a = cv[3 * g], b = cv[3 * g + 1], c = cv[3 * g + 2];
    const float det_eps = (a + e) * (c + e) - b * b;
    float va = 0.f, vb = 0.f, vcc = 0.f, vop = 0.f;
    for (int64_t f = 0; f < F; ++f) {
      const int64_t i = f * N + g;
      const float d = s2[i] + e;
      const float a2 = a + d, c2 = c + d;
      const float det2 = a2 * c2 - b * b;
      const bool ok = vl[g] && det_eps > 0.f && det2 > 0.f;
      const float inv = 1.0f / (ok ? det2 : 1.0f);
      const float v0 = vc[3 * i], v1 = vc[3 * i + 1], v2 = vc[3 * i + 2];
      float v_a2 = v2 * inv, v_c2 = v0 * inv, v_b = -v1 * inv;
      float v_inv = v0 * c2 - v1 * b + v2 * a2;
      float v_det_eps = 0.f;
      if (ok) {
        const float r = std::sqrt(det_eps * inv);
        vop += vo[i] * r;
        const float v_ratio = vo[i] * op[g] * 0.5f / r;
        v_det_eps = v_ratio * inv;
        v_inv += v_ratio * det_eps;
        const float v_det2 = -v_inv * inv * inv;
        v_a2 += v_det2 * c2;
        v_c2 += v_det2 * a2;
        v_b -= 2.0f * b * v_det2;
      }
      va += v_a2 + v_det_eps * (c + e);
      vcc += v_c2 + v_det_eps * (a + e);
      vb += v_b - 2.0f * b * v_det_eps;
      gs[i] = v_a2 + v_c2;
    }
    gc[3 * g] = va;
    gc[3 * g + 1] = vb;
    gc[3 * g + 2] = vcc;
    go[g] = vop;
  }
  return {g_cov, g_op, g_s2};
}

int64_t simd_width() { return L; }

#define GS_DISPATCH_K(K, FN, ...)                     \
  switch (K) {                                        \
    case 1: FN<1>(__VA_ARGS__); break;                \
    case 2: FN<2>(__VA_ARGS__); break;                \
    case 3: FN<3>(__VA_ARGS__); break;                \
    case 4: FN<4>(__VA_ARGS__); break;                \
    case 5: FN<5>(__VA_ARGS__); break;                \
    case 6: FN<6>(__VA_ARGS__); break;                \
    default: FN<0>(__VA_ARGS__); break;               \
  }

// Returns (features [F,H,W,K], final transmittance [F,H,W], n_contrib [F,H,W] int32,
//          tile offsets [F,T+1] int64, tile ids [P] int32).
std::vector<torch::Tensor> forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                   torch::Tensor features, torch::Tensor radii, torch::Tensor rects,
                                   torch::Tensor order, int64_t width, int64_t height, int64_t tile,
                                   int64_t nthreads) {
  TORCH_CHECK(means2d.dtype() == torch::kFloat32 && conics.dtype() == torch::kFloat32, "float32 expected");
  TORCH_CHECK(rects.dtype() == torch::kInt32 && order.dtype() == torch::kInt64, "int32 rects, int64 order");
  means2d = means2d.contiguous(); conics = conics.contiguous(); opacities = opacities.contiguous();
  features = features.contiguous(); radii = radii.contiguous(); rects = rects.contiguous(); order = order.contiguous();
  const int64_t F = opacities.size(0), N = opacities.size(1), K = features.size(2);
  TORCH_CHECK(K >= 1 && K <= kMaxChannels, "1 to ", kMaxChannels, " channels supported, got ", K);
  const Geometry geo = make_geometry(width, height, tile);
  const int nt = std::max<int64_t>(1, nthreads);
  PhaseTimer timer;
  const int64_t M = order.size(0);
  std::vector<int32_t> rank;
  const torch::Tensor spatial_t = spatial_order(rects.data_ptr<int32_t>(), order.data_ptr<int64_t>(), M, N, F,
                                                geo.tiles_x, geo.n_tiles, rank);
  torch::Tensor offsets_t, ids_t;  // tile lists hold spatial ranks
  bin_tiles(rects.data_ptr<int32_t>(), order.data_ptr<int64_t>(), M, N, F, geo, nt, rank, offsets_t, ids_t);
  timer.lap("bin");
  const torch::Tensor rec_t = pack_records(means2d, conics, opacities, radii, features, spatial_t, nt);
  timer.lap("pack");

  auto out = torch::zeros({F, height, width, K}, torch::kFloat32);
  auto tfinal = torch::ones({F, height, width}, torch::kFloat32);
  auto ncontrib = torch::zeros({F, height, width}, torch::kInt32);
  const float* rec = rec_t.data_ptr<float>();
  const int64_t R = kRec + K;
  const int64_t* offs = offsets_t.data_ptr<int64_t>();
  const int32_t* ids = ids_t.data_ptr<int32_t>();
  float* o_ptr = out.data_ptr<float>();
  float* t_ptr = tfinal.data_ptr<float>();
  int32_t* n_ptr = ncontrib.data_ptr<int32_t>();
  const int64_t items = F * geo.n_tiles;
  const int Ki = static_cast<int>(K);

#pragma omp parallel num_threads(nt)
  {
    TileData d;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t f = item / geo.n_tiles;
      const int t = static_cast<int>(item % geo.n_tiles);
      const int64_t s = offs[f * (geo.n_tiles + 1) + t], e = offs[f * (geo.n_tiles + 1) + t + 1];
      const int n = static_cast<int>(e - s);
      if (n == 0) continue;
      d.gather(n, Ki, ids + s, rec + f * M * R);
      GS_DISPATCH_K(Ki, forward_tile, d, n, Ki, geo, t, f, o_ptr, t_ptr, n_ptr)
    }
  }
  timer.lap("raster fwd");
  return {out, tfinal, ncontrib, offsets_t, ids_t, spatial_t};
}

// Returns gradients (means2d [N,2], conics [F,N,3], opacities [F,N], features [F,N,K]).
std::vector<torch::Tensor> backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                    torch::Tensor features, torch::Tensor radii, torch::Tensor offsets_t,
                                    torch::Tensor ids_t, torch::Tensor spatial_t, torch::Tensor tfinal,
                                    torch::Tensor ncontrib,
                                    torch::Tensor grad_out, torch::Tensor grad_alpha, int64_t width, int64_t height,
                                    int64_t tile, int64_t nthreads) {
  means2d = means2d.contiguous(); conics = conics.contiguous(); opacities = opacities.contiguous();
  features = features.contiguous(); radii = radii.contiguous();
  grad_out = grad_out.contiguous(); grad_alpha = grad_alpha.contiguous();
  const int64_t F = opacities.size(0), N = opacities.size(1), K = features.size(2);
  TORCH_CHECK(K >= 1 && K <= kMaxChannels, "1 to ", kMaxChannels, " channels supported, got ", K);
  const Geometry geo = make_geometry(width, height, tile);
  const int nt = std::max<int64_t>(1, nthreads);
  PhaseTimer timer;
  const int64_t M = spatial_t.size(0);
  const torch::Tensor rec_t = pack_records(means2d, conics, opacities, radii, features, spatial_t, nt);
  const int Q = 6 + static_cast<int>(K);
  // Per-thread gradient records [m0 m1 c0 c1 c2 o f...] per (frame, spatial rank), summed at the
  // end: deterministic for a fixed thread count (static tile assignment), no atomics.
  auto g_all = torch::empty({nt, F, M, Q}, torch::kFloat32);
  const float* rec = rec_t.data_ptr<float>();
  const int64_t R = kRec + K;
  const int64_t* offs = offsets_t.data_ptr<int64_t>();
  const int32_t* ids = ids_t.data_ptr<int32_t>();
  const float* tf = tfinal.data_ptr<float>();
  const int32_t* nc = ncontrib.data_ptr<int32_t>();
  const float* go = grad_out.data_ptr<float>();
  const float* ga = grad_alpha.data_ptr<float>();
  const int64_t items = F * geo.n_tiles;
  const int Ki = static_cast<int>(K);
  timer.lap("bwd setup");

#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    float* g_t = g_all.data_ptr<float>() + tid * F * M * Q;
    std::memset(g_t, 0, sizeof(float) * F * M * Q);  // first touch by the thread that uses it
    TileData d;
    // Round-robin, not dynamic: which thread sums which tile must not depend on timing, or the
    // float sums in the thread buffers (and so the gradients) would differ from run to run.
#pragma omp for schedule(static, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t f = item / geo.n_tiles;
      const int t = static_cast<int>(item % geo.n_tiles);
      const int64_t s = offs[f * (geo.n_tiles + 1) + t], e = offs[f * (geo.n_tiles + 1) + t + 1];
      const int n = static_cast<int>(e - s);
      if (n == 0) continue;
      d.gather(n, Ki, ids + s, rec + f * M * R);
      GS_DISPATCH_K(Ki, backward_tile, d, n, Ki, geo, t, f, tf, nc, go, ga, ids + s, M, g_t)
    }
  }
  timer.lap("raster bwd");
  // Reduce the thread buffers straight into the four gradient tensors.
  auto v_means2d = torch::zeros({N, 2}, torch::kFloat32);
  auto v_conics = torch::zeros({F, N, 3}, torch::kFloat32);
  auto v_opac = torch::zeros({F, N}, torch::kFloat32);
  auto v_feat = torch::zeros({F, N, K}, torch::kFloat32);
  {
    const float* ga_p = g_all.data_ptr<float>();
    const int32_t* sp = spatial_t.data_ptr<int32_t>();
    float* vm = v_means2d.data_ptr<float>();
    float* vcn = v_conics.data_ptr<float>();
    float* vop = v_opac.data_ptr<float>();
    float* vft = v_feat.data_ptr<float>();
    const int64_t stride = F * M * Q;
#pragma omp parallel for num_threads(nt) schedule(static) if(worth_threads(F * M))
    for (int64_t r = 0; r < M; ++r) {
      const int64_t g = sp[r];
      float m0 = 0.f, m1 = 0.f;
      for (int64_t f = 0; f < F; ++f) {
        float acc[6 + kMaxChannels] = {};
        for (int th = 0; th < nt; ++th) {
          const float* src = ga_p + th * stride + (f * M + r) * Q;
          for (int q = 0; q < Q; ++q) acc[q] += src[q];
        }
        m0 += acc[0];
        m1 += acc[1];
        const int64_t fg = f * N + g;
        for (int q = 0; q < 3; ++q) vcn[3 * fg + q] = acc[2 + q];
        vop[fg] = acc[5];
        for (int64_t c = 0; c < K; ++c) vft[fg * K + c] = acc[6 + c];
      }
      vm[2 * g] = m0;
      vm[2 * g + 1] = m1;
    }
  }
  timer.lap("reduce");
  return {v_means2d, v_conics, v_opac, v_feat};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "defocus GS rasteriser forward (CPU)");
  m.def("backward", &backward, "defocus GS rasteriser backward (CPU)");
  m.def("simd_width", &simd_width, "SIMD lanes per pixel group");
  m.def("prepare", &prepare, "tile ranges and depth order (CPU)");
  m.def("dilate_forward", &dilate_forward, "defocus dilation forward (CPU)");
  m.def("dilate_backward", &dilate_backward, "defocus dilation backward (CPU)");
  m.def("project_forward", &project_forward, "EWA projection forward (CPU)");
  m.def("project_backward", &project_backward, "EWA projection backward (CPU)");
}
