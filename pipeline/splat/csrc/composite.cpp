// Tile compositing of depth-sorted 2D Gaussians on the CPU: forward and backward.
//
// The maths of pipeline/splat/raster_torch.py (gsplat 1.5.3's rasterize_to_pixels): at pixel
// centres, alpha = min(0.999, opacity * exp(-sigma)), sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with
// (dx, dy) = mean - pixel centre; entries with alpha < 1/255 are skipped; a pixel stops before the
// first entry that would bring its transmittance to <= 1e-4. Per pixel the loop runs front to back
// and stops there, so pixels an entry does not reach cost one exponent each and nothing else.
//
// forward(means2d [M, 2], conics [M, 3], opacities [M], colors [M, C], tile_offsets [I*T + 1],
//         flatten_ids [n], width, height, tile_size, tiles_w, tiles_h)
//   -> (colors [I, H, W, C], transmittance [I, H, W], last [I, H, W] int32: one past the last
//       list position a pixel composited)
// backward(..., v_colors [I, H, W, C], v_transmittance [I, H, W]) -> (v_means2d, v_conics,
//       v_opacities, v_colors), by the usual back-to-front recursion from the final transmittance.
// Tiles run in parallel (OpenMP, torch's thread count); gradients go to per-thread buffers
// [M, 6 + C] that are summed at the end.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kAlphaMax = 0.999;
constexpr double kTMin = 1e-4;

struct Grid {
  int64_t width, height, tile, tiles_w, tiles_h, n_images;
};

inline int threads() {
#ifdef _OPENMP
  return std::max(1, at::get_num_threads());
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// alpha at offset (dx, dy) of entry g; returns false when the entry is skipped (alpha < 1/255)
template <typename T>
inline bool alpha_at(const T* conic, T opacity, T dx, T dy, T& sigma, T& vis, T& alpha) {
  sigma = T(0.5) * (conic[0] * dx * dx + conic[2] * dy * dy) + conic[1] * dx * dy;
  vis = std::exp(-sigma);
  const T a = opacity * vis;
  if (!(a >= T(kAlphaMin))) return false;
  alpha = std::min(a, T(kAlphaMax));
  return true;
}

template <typename T>
void forward_impl(const T* means2d, const T* conics, const T* opac, const T* colors, int64_t C,
                  const int64_t* offsets, const int64_t* ids, const Grid& g, T* out, T* trans, int32_t* last) {
  const int64_t n_tiles = g.tiles_w * g.tiles_h, total = g.n_images * n_tiles;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads())
  for (int64_t t = 0; t < total; ++t) {
    const int64_t image = t / n_tiles, tile = t % n_tiles;
    const int64_t x0 = (tile % g.tiles_w) * g.tile, y0 = (tile / g.tiles_w) * g.tile;
    const int64_t start = offsets[t], end = offsets[t + 1];
    for (int64_t y = y0; y < std::min(y0 + g.tile, g.height); ++y) {
      for (int64_t x = x0; x < std::min(x0 + g.tile, g.width); ++x) {
        const int64_t p = (image * g.height + y) * g.width + x;
        T* o = out + p * C;
        const T px = T(x) + T(0.5), py = T(y) + T(0.5);
        T tr = T(1);
        int32_t stop = int32_t(start);
        for (int64_t k = start; k < end; ++k) {
          const int64_t e = ids[k];
          T sigma, vis, alpha;
          if (!alpha_at(conics + 3 * e, opac[e], means2d[2 * e] - px, means2d[2 * e + 1] - py, sigma, vis, alpha))
            continue;
          const T next = tr * (T(1) - alpha);
          if (next <= T(kTMin)) break;
          const T w = alpha * tr;
          const T* c = colors + e * C;
          for (int64_t ch = 0; ch < C; ++ch) o[ch] += w * c[ch];
          tr = next;
          stop = int32_t(k + 1);
        }
        trans[p] = tr;
        last[p] = stop;
      }
    }
  }
}

template <typename T>
void backward_impl(const T* means2d, const T* conics, const T* opac, const T* colors, int64_t C, int64_t M,
                   const int64_t* offsets, const int64_t* ids, const Grid& g, const T* trans, const int32_t* last,
                   const T* v_out, const T* v_trans, T* v_means2d, T* v_conics, T* v_opac, T* v_colors) {
  const int64_t n_tiles = g.tiles_w * g.tiles_h, total = g.n_images * n_tiles;
  const int n_threads = threads();
  const int64_t stride = 6 + C;  // per entry: means2d 2, conics 3, opacity 1, colours C
  std::vector<T> buffers(size_t(n_threads) * M * stride, T(0));
#pragma omp parallel num_threads(n_threads)
  {
    T* acc = buffers.data() + size_t(thread_id()) * M * stride;
    std::vector<T> behind(C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < total; ++t) {
      const int64_t image = t / n_tiles, tile = t % n_tiles;
      const int64_t x0 = (tile % g.tiles_w) * g.tile, y0 = (tile / g.tiles_w) * g.tile;
      const int64_t start = offsets[t];
      for (int64_t y = y0; y < std::min(y0 + g.tile, g.height); ++y) {
        for (int64_t x = x0; x < std::min(x0 + g.tile, g.width); ++x) {
          const int64_t p = (image * g.height + y) * g.width + x;
          if (last[p] <= start) continue;
          const T px = T(x) + T(0.5), py = T(y) + T(0.5);
          const T* vo = v_out + p * C;
          const T t_final = trans[p], vt = v_trans[p];
          T tr = t_final;
          std::fill(behind.begin(), behind.end(), T(0));
          for (int64_t k = int64_t(last[p]) - 1; k >= start; --k) {
            const int64_t e = ids[k];
            const T* cn = conics + 3 * e;
            const T dx = means2d[2 * e] - px, dy = means2d[2 * e + 1] - py;
            T sigma, vis, alpha;
            if (!alpha_at(cn, opac[e], dx, dy, sigma, vis, alpha)) continue;
            const T ra = T(1) / (T(1) - alpha);
            tr *= ra;  // transmittance in front of this entry
            const T w = alpha * tr;
            const T* c = colors + e * C;
            T* a = acc + e * stride;
            T v_alpha = -t_final * ra * vt;
            for (int64_t ch = 0; ch < C; ++ch) {
              v_alpha += (c[ch] * tr - behind[ch] * ra) * vo[ch];
              behind[ch] += c[ch] * w;
              a[6 + ch] += w * vo[ch];
            }
            if (opac[e] * vis > T(kAlphaMax)) continue;  // clamped alpha: no gradient to its inputs
            const T v_sigma = -alpha * v_alpha;
            a[0] += (cn[0] * dx + cn[1] * dy) * v_sigma;
            a[1] += (cn[2] * dy + cn[1] * dx) * v_sigma;
            a[2] += T(0.5) * dx * dx * v_sigma;
            a[3] += dx * dy * v_sigma;
            a[4] += T(0.5) * dy * dy * v_sigma;
            a[5] += vis * v_alpha;
          }
        }
      }
    }
  }
#pragma omp parallel for num_threads(n_threads)
  for (int64_t e = 0; e < M; ++e) {
    for (int th = 0; th < n_threads; ++th) {
      const T* a = buffers.data() + (size_t(th) * M + e) * stride;
      v_means2d[2 * e] += a[0];
      v_means2d[2 * e + 1] += a[1];
      v_conics[3 * e] += a[2];
      v_conics[3 * e + 1] += a[3];
      v_conics[3 * e + 2] += a[4];
      v_opac[e] += a[5];
      for (int64_t ch = 0; ch < C; ++ch) v_colors[e * C + ch] += a[6 + ch];
    }
  }
}

Grid grid_of(int64_t width, int64_t height, int64_t tile, int64_t tiles_w, int64_t tiles_h, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.numel() >= 1 && (offsets.numel() - 1) % (tiles_w * tiles_h) == 0,
              "tile_offsets must hold I * tiles + 1 entries");
  return Grid{width, height, tile, tiles_w, tiles_h, (offsets.numel() - 1) / (tiles_w * tiles_h)};
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
}

}  // namespace

std::vector<at::Tensor> forward(at::Tensor means2d, at::Tensor conics, at::Tensor opac, at::Tensor colors,
                                at::Tensor offsets, at::Tensor ids, int64_t width, int64_t height, int64_t tile,
                                int64_t tiles_w, int64_t tiles_h) {
  for (auto* t : {&means2d, &conics, &opac, &colors, &offsets, &ids}) check(*t, "input");
  const Grid g = grid_of(width, height, tile, tiles_w, tiles_h, offsets);
  const int64_t C = colors.size(1);
  auto out = at::zeros({g.n_images, height, width, C}, colors.options());
  auto trans = at::ones({g.n_images, height, width}, colors.options());
  auto last = at::zeros({g.n_images, height, width}, colors.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "m3_composite_forward", [&] {
    forward_impl<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(),
                           colors.data_ptr<scalar_t>(), C, offsets.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), g,
                           out.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(), last.data_ptr<int32_t>());
  });
  return {out, trans, last};
}

std::vector<at::Tensor> backward(at::Tensor means2d, at::Tensor conics, at::Tensor opac, at::Tensor colors,
                                 at::Tensor offsets, at::Tensor ids, int64_t width, int64_t height, int64_t tile,
                                 int64_t tiles_w, int64_t tiles_h, at::Tensor trans, at::Tensor last,
                                 at::Tensor v_out, at::Tensor v_trans) {
  for (auto* t : {&means2d, &conics, &opac, &colors, &offsets, &ids, &trans, &last, &v_out, &v_trans})
    check(*t, "input");
  const Grid g = grid_of(width, height, tile, tiles_w, tiles_h, offsets);
  const int64_t C = colors.size(1), M = colors.size(0);
  auto v_means2d = at::zeros_like(means2d), v_conics = at::zeros_like(conics);
  auto v_opac = at::zeros_like(opac), v_colors = at::zeros_like(colors);
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "m3_composite_backward", [&] {
    backward_impl<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(),
                            colors.data_ptr<scalar_t>(), C, M, offsets.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), g,
                            trans.data_ptr<scalar_t>(), last.data_ptr<int32_t>(), v_out.data_ptr<scalar_t>(),
                            v_trans.data_ptr<scalar_t>(), v_means2d.data_ptr<scalar_t>(),
                            v_conics.data_ptr<scalar_t>(), v_opac.data_ptr<scalar_t>(),
                            v_colors.data_ptr<scalar_t>());
  });
  return {v_means2d, v_conics, v_opac, v_colors};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "tile compositing, forward");
  m.def("backward", &backward, "tile compositing, backward");
}
