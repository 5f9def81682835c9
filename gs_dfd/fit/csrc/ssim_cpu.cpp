// Fused SSIM loss (Wang et al. 2004) on CPU: forward and analytic backward, OpenMP over rows.
//
// Same definition as ssim_torch in gs_dfd/fit/losses.py, which stays the reference: mean over
// the 'valid' region of the SSIM map of every (image, channel), 11-tap separable Gaussian window
// (the weights come from Python, so both use the same floats), c1 = 0.01^2, c2 = 0.03^2. Depthwise
// convolutions are slow on CPU and their autograd graph keeps a dozen full-size temporaries; here
// every pass streams through the images once.
//
// Layout: the [B, H, W, C] tensors are used as they are. A row of one image is W*C contiguous
// floats, so a vertical tap is a contiguous vector load and a horizontal tap is a load shifted by
// t*C floats: one loop over all channels at once, vectorised for any C, no planar copies.
//
// Forward, one task per output row (b, i): a vertical pass over input rows i..i+10 gives the five
// statistics (mu_x, mu_y, E[x^2], E[y^2], E[xy]) for every column of the row, a horizontal pass
// gives them at the output columns, and the SSIM value and its partial derivatives w.r.t.
// (mu_x, E[x^2], E[xy]) are computed there. S = N1 N2 / (D1 D2) with
//   N1 = 2 mx my + c1, N2 = 2 (exy - mx my) + c2, D1 = mx^2 + my^2 + c1, D2 = exx - mx^2 + eyy - my^2 + c2,
// so, with D = D1 D2:
//   dS/dmx  = (2 my (N2 - N1) - 2 mx S (D2 - D1)) / D
//   dS/dexx = -S / D2
//   dS/dexy = 2 N1 / D.
// The three maps are saved (when a gradient is needed) and the row sums of S are added in a
// fixed order, so the result does not depend on the thread count.
//
// Backward, one task per input row (b, r): the transposed ('full') separable blur of the three
// maps (vertical over output rows r-10..r, then horizontal through a zero-padded row) gives
// T(dS/dmx), T(dS/dexx), T(dS/dexy) at the pixel, and
//   dL/dx = scale * (T(dS/dmx) + 2 x T(dS/dexx) + y T(dS/dexy)),  scale = grad / (B C Ho Wo).
// No gradient for the target: the fit's targets are data.
//
// Precision: float32 arithmetic, as ssim_torch on float32 images (row sums of S in double). Where an
// image is flat and bright, sigma^2 = E[x^2] - mu^2 is the difference of two numbers near 1 that should
// cancel to far below c2, so float32 rounding of the statistics (and of the window weights, whose sum
// is not exactly 1) changes S and its gradient there by about ulp(1) / c2, in both implementations
// alike. Only double statistics with double weights would remove that, at several times the cost.
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int K = 11;          // window taps
constexpr int R = K - 1;       // output is (H - R) x (W - R)
constexpr float kC1 = 0.01f * 0.01f;
constexpr float kC2 = 0.03f * 0.03f;

// Small inputs are not worth waking threads for.
inline bool worth_threads(int64_t work) { return work >= 20000; }

void check_images(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(t.dim() == 4, name, " must be [B, H, W, C], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

std::vector<float> window_weights(const torch::Tensor& window) {
  TORCH_CHECK(window.dim() == 1 && window.numel() == K, "window must have ", K, " taps, got ", window.sizes());
  const auto w = window.to(torch::kFloat32).contiguous();
  return std::vector<float>(w.data_ptr<float>(), w.data_ptr<float>() + K);
}

// Transposed vertical pass of the backward: out_k[q] = sum_j w[-j] * m_k[j * stride + q] for j < N, the
// three maps at once. N is a template argument so the tap loop unrolls inside the vectorised loop
// (a run-time trip count there stops GCC from vectorising).
template <int N>
void vblur3(const float* w, const float* a, const float* b, const float* c, int64_t stride, int64_t len, float* oa,
            float* ob, float* oc) {
#pragma omp simd
  for (int64_t q = 0; q < len; ++q) {
    float sa = 0.f, sb = 0.f, sc = 0.f;
    for (int j = 0; j < N; ++j) {
      const float wj = w[-j];
      sa += wj * a[j * stride + q];
      sb += wj * b[j * stride + q];
      sc += wj * c[j * stride + q];
    }
    oa[q] = sa;
    ob[q] = sb;
    oc[q] = sc;
  }
}

template <int N = K>
void vblur3_dispatch(int n, const float* w, const float* a, const float* b, const float* c, int64_t len, float* oa,
                     float* ob, float* oc) {
  if constexpr (N >= 1) {
    if (n == N) return vblur3<N>(w, a, b, c, len, len, oa, ob, oc);
    return vblur3_dispatch<N - 1>(n, w, a, b, c, len, oa, ob, oc);
  }
}

// Returns (mean SSIM as a float32 scalar, partials [3, B, Ho, Wo, C] or an empty tensor without need_grad).
std::vector<torch::Tensor> ssim_forward(torch::Tensor pred, torch::Tensor target, torch::Tensor window,
                                        bool need_grad, int64_t nthreads) {
  check_images(pred, "pred");
  check_images(target, "target");
  TORCH_CHECK(pred.sizes() == target.sizes(), "pred and target shapes differ: ", pred.sizes(), " vs ",
              target.sizes());
  const int64_t B = pred.size(0), H = pred.size(1), W = pred.size(2), C = pred.size(3);
  TORCH_CHECK(H >= K && W >= K, "SSIM needs images of at least ", K, "x", K, " pixels, got ", H, "x", W);
  TORCH_CHECK(B > 0 && C > 0, "SSIM of an empty batch");
  const std::vector<float> gw = window_weights(window);
  const int64_t Ho = H - R, Wo = W - R;
  const int64_t row = W * C, orow = Wo * C;
  const float* X = pred.data_ptr<float>();
  const float* Y = target.data_ptr<float>();
  torch::Tensor partials = need_grad ? torch::empty({3, B, Ho, Wo, C}, pred.options()) : torch::Tensor();
  float* P = need_grad ? partials.data_ptr<float>() : nullptr;
  const int64_t plane = B * Ho * orow;
  std::vector<double> row_sums(B * Ho);
  const int64_t tasks = B * Ho;
  const float* g = gw.data();

#pragma omp parallel num_threads(std::max<int64_t>(1, nthreads)) if(worth_threads(tasks * orow))
  {
    std::vector<float> buf(5 * row);
    float* vx = buf.data();
    float* vy = vx + row;
    float* vxx = vy + row;
    float* vyy = vxx + row;
    float* vxy = vyy + row;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / Ho, i = task % Ho;
      const float* x0 = X + (b * H + i) * row;
      const float* y0 = Y + (b * H + i) * row;
      // Vertical pass: input rows i..i+10, every column.
#pragma omp simd
      for (int64_t q = 0; q < row; ++q) {
        float sx = 0.f, sy = 0.f, sxx = 0.f, syy = 0.f, sxy = 0.f;
        for (int t = 0; t < K; ++t) {
          const float xv = x0[t * row + q], yv = y0[t * row + q], w = g[t];
          const float wx = w * xv, wy = w * yv;
          sx += wx;
          sy += wy;
          sxx += wx * xv;
          syy += wy * yv;
          sxy += wx * yv;
        }
        vx[q] = sx;
        vy[q] = sy;
        vxx[q] = sxx;
        vyy[q] = syy;
        vxy[q] = sxy;
      }
      // Horizontal pass at the output columns, then SSIM and its partials.
      float* pa = need_grad ? P + task * orow : nullptr;
      float* pb = need_grad ? pa + plane : nullptr;
      float* pc = need_grad ? pb + plane : nullptr;
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t q = 0; q < orow; ++q) {
        float mx = 0.f, my = 0.f, exx = 0.f, eyy = 0.f, exy = 0.f;
        for (int t = 0; t < K; ++t) {
          const float w = g[t];
          const int64_t k = q + t * C;
          mx += w * vx[k];
          my += w * vy[k];
          exx += w * vxx[k];
          eyy += w * vyy[k];
          exy += w * vxy[k];
        }
        const float mxy = mx * my, mxx = mx * mx, myy = my * my;
        const float n1 = 2.f * mxy + kC1;
        const float n2 = 2.f * (exy - mxy) + kC2;
        const float d1 = mxx + myy + kC1;
        const float d2 = (exx - mxx) + (eyy - myy) + kC2;
        const float inv_d = 1.f / (d1 * d2);
        const float s = n1 * n2 * inv_d;
        sum += static_cast<double>(s);
        if (need_grad) {
          pa[q] = (2.f * my * (n2 - n1) - 2.f * mx * s * (d2 - d1)) * inv_d;
          pb[q] = -s / d2;
          pc[q] = 2.f * n1 * inv_d;
        }
      }
      row_sums[task] = sum;
    }
  }
  double total = 0.0;
  for (double s : row_sums) total += s;
  const double mean = total / static_cast<double>(B * Ho * orow);
  return {torch::tensor(static_cast<float>(mean), pred.options()).reshape({}), partials};
}

// grad: scalar dL/d(mean SSIM); partials from ssim_forward. Returns dL/dpred [B, H, W, C].
torch::Tensor ssim_backward(torch::Tensor grad, torch::Tensor partials, torch::Tensor pred, torch::Tensor target,
                            torch::Tensor window, int64_t nthreads) {
  check_images(pred, "pred");
  check_images(target, "target");
  TORCH_CHECK(pred.sizes() == target.sizes(), "pred and target shapes differ");
  TORCH_CHECK(grad.numel() == 1, "grad must be a scalar");
  const int64_t B = pred.size(0), H = pred.size(1), W = pred.size(2), C = pred.size(3);
  const int64_t Ho = H - R, Wo = W - R;
  TORCH_CHECK(partials.defined() && partials.scalar_type() == torch::kFloat32 && partials.is_contiguous() &&
                  partials.sizes() == torch::IntArrayRef({3, B, Ho, Wo, C}),
              "partials must be the contiguous float32 [3, B, Ho, Wo, C] map of ssim_forward");
  const std::vector<float> gw = window_weights(window);
  const int64_t row = W * C, orow = Wo * C, plane = B * Ho * orow, pad = R * C;
  const float scale = static_cast<float>(grad.item<double>() / static_cast<double>(B * Ho * orow));
  const float* X = pred.data_ptr<float>();
  const float* Y = target.data_ptr<float>();
  const float* P = partials.data_ptr<float>();
  torch::Tensor out = torch::empty_like(pred);
  float* G = out.data_ptr<float>();
  const int64_t tasks = B * H;
  const float* g = gw.data();

#pragma omp parallel num_threads(std::max<int64_t>(1, nthreads)) if(worth_threads(tasks * row))
  {
    // Rows of the vertically blurred maps with R*C zeros on each side: the horizontal transposed
    // pass then reads 11 taps for every column without bounds tests.
    const int64_t prow = orow + 2 * pad;
    std::vector<float> buf(3 * prow, 0.f);
    float* va = buf.data();
    float* vb = va + prow;
    float* vc = vb + prow;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / H, r = task % H;
      const int64_t i_lo = std::max<int64_t>(0, r - R), i_hi = std::min<int64_t>(Ho - 1, r);
      const int n = static_cast<int>(i_hi - i_lo + 1);  // 1..11 output rows see input row r
      const float* pa = P + (b * Ho + i_lo) * orow;
      // Weight of output row i_lo + j is g[r - i_lo - j].
      vblur3_dispatch(n, g + (r - i_lo), pa, pa + plane, pa + 2 * plane, orow, va + pad, vb + pad, vc + pad);
      const float* x = X + task * row;
      const float* y = Y + task * row;
      float* o = G + task * row;
#pragma omp simd
      for (int64_t p = 0; p < row; ++p) {
        float ta = 0.f, tb = 0.f, tc = 0.f;
        for (int t = 0; t < K; ++t) {
          const float w = g[t];
          const int64_t k = p + (R - t) * C;  // padded index of output column (col - t)
          ta += w * va[k];
          tb += w * vb[k];
          tc += w * vc[k];
        }
        o[p] = scale * (ta + 2.f * x[p] * tb + y[p] * tc);
      }
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ssim_forward", &ssim_forward, "fused SSIM forward (CPU): (mean, partials)");
  m.def("ssim_backward", &ssim_backward, "fused SSIM backward (CPU): gradient w.r.t. pred");
}
