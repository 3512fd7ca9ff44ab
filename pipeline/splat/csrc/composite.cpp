// Tile compositing of depth-sorted 2D Gaussians on the CPU: forward and backward.
//
// The maths of pipeline/splat/raster_torch.py (gsplat 1.5.3's rasterize_to_pixels): at pixel
// centres, alpha = min(0.999, opacity * exp(-sigma)), sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with
// (dx, dy) = mean - pixel centre; entries with alpha < 1/255 are skipped; a pixel stops before the
// first entry that would bring its transmittance to <= 1e-4.
//
// Tile-major, as a GPU block: a tile's list entries are visited once each, front to back, and
// each entry is evaluated for all of the tile's pixels in a tight loop that the compiler
// vectorises (sigma first; a pixel beyond the entry's reach, sigma > ln(255 opacity), costs no
// exponent); the tile stops when all its pixels are done. The backward walks the list back to
// front and sums an entry's gradient over the tile's pixels before writing it once.
//
// forward(means2d [M, 2], conics [M, 3], opacities [M], colors [M, C], tile_offsets [I*T + 1],
//         flatten_ids [n], width, height, tile_size, tiles_w, tiles_h)
//   -> (colors [I, H, W, C], transmittance [I, H, W], last [I, H, W] int32: one past the last
//       list position a pixel composited)
// backward(..., v_colors [I, H, W, C], v_transmittance [I, H, W]) -> (v_means2d, v_conics,
//       v_opacities, v_colors), the usual back-to-front recursion from the final transmittance.
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

// The pixels of one tile: centres, their index into the image, and per-pixel scratch.
template <typename T>
struct Tile {
  int64_t n = 0;
  std::vector<T> px, py, sigma;
  std::vector<int64_t> index;
  explicit Tile(int64_t size) : px(size), py(size), sigma(size), index(size) {}

  void set(const Grid& g, int64_t t) {
    const int64_t n_tiles = g.tiles_w * g.tiles_h, image = t / n_tiles, tile = t % n_tiles;
    const int64_t x0 = (tile % g.tiles_w) * g.tile, y0 = (tile / g.tiles_w) * g.tile;
    n = 0;
    for (int64_t y = y0; y < std::min(y0 + g.tile, g.height); ++y)
      for (int64_t x = x0; x < std::min(x0 + g.tile, g.width); ++x, ++n) {
        px[n] = T(x) + T(0.5);
        py[n] = T(y) + T(0.5);
        index[n] = (image * g.height + y) * g.width + x;
      }
  }

  // sigma of entry e at every pixel; returns false when no pixel is within the entry's reach
  bool sigmas(const T* means2d, const T* conics, int64_t e, T reach) {
    const T mx = means2d[2 * e], my = means2d[2 * e + 1];
    const T a = T(0.5) * conics[3 * e], b = conics[3 * e + 1], c = T(0.5) * conics[3 * e + 2];
    T lowest = reach + T(1);
    for (int64_t p = 0; p < n; ++p) {
      const T dx = mx - px[p], dy = my - py[p];
      sigma[p] = a * dx * dx + c * dy * dy + b * dx * dy;
      lowest = std::min(lowest, sigma[p]);
    }
    return lowest <= reach;
  }
};

// ln(255 opacity) + 1e-4 per entry: a larger sigma cannot reach alpha 1/255 (the margin leaves the
// exact alpha test to decide at the boundary)
template <typename T>
std::vector<T> reaches(const T* opac, int64_t M) {
  std::vector<T> r(M);
  for (int64_t e = 0; e < M; ++e) r[e] = std::log(std::max(opac[e], T(1e-30)) * T(255)) + T(1e-4);
  return r;
}

template <typename T>
void forward_impl(const T* means2d, const T* conics, const T* opac, const T* colors, int64_t C, int64_t M,
                  const int64_t* offsets, const int64_t* ids, const Grid& g, T* out, T* trans, int32_t* last) {
  const int64_t total = g.n_images * g.tiles_w * g.tiles_h;
  const std::vector<T> reach = reaches(opac, M);
#pragma omp parallel num_threads(threads())
  {
    Tile<T> tile(g.tile * g.tile);
    std::vector<T> tr(g.tile * g.tile);
    std::vector<char> done(g.tile * g.tile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < total; ++t) {
      tile.set(g, t);
      std::fill(tr.begin(), tr.begin() + tile.n, T(1));
      std::fill(done.begin(), done.begin() + tile.n, char(0));
      int64_t n_done = 0;
      for (int64_t k = offsets[t]; k < offsets[t + 1] && n_done < tile.n; ++k) {
        const int64_t e = ids[k];
        if (!tile.sigmas(means2d, conics, e, reach[e])) continue;
        const T* c = colors + e * C;
        for (int64_t p = 0; p < tile.n; ++p) {
          if (done[p] || tile.sigma[p] > reach[e]) continue;
          const T a = opac[e] * std::exp(-tile.sigma[p]);
          if (!(a >= T(kAlphaMin))) continue;
          const T alpha = std::min(a, T(kAlphaMax));
          const T next = tr[p] * (T(1) - alpha);
          if (next <= T(kTMin)) {
            done[p] = 1;
            ++n_done;
            continue;
          }
          const T w = alpha * tr[p];
          T* o = out + tile.index[p] * C;
          for (int64_t ch = 0; ch < C; ++ch) o[ch] += w * c[ch];
          tr[p] = next;
          last[tile.index[p]] = int32_t(k + 1);
        }
      }
      for (int64_t p = 0; p < tile.n; ++p) trans[tile.index[p]] = tr[p];
    }
  }
}

template <typename T>
void backward_impl(const T* means2d, const T* conics, const T* opac, const T* colors, int64_t C, int64_t M,
                   const int64_t* offsets, const int64_t* ids, const Grid& g, const T* trans, const int32_t* last,
                   const T* v_out, const T* v_trans, T* v_means2d, T* v_conics, T* v_opac, T* v_colors) {
  const int64_t total = g.n_images * g.tiles_w * g.tiles_h;
  const int n_threads = threads();
  const int64_t stride = 6 + C;  // per entry: means2d 2, conics 3, opacity 1, colours C
  const std::vector<T> reach = reaches(opac, M);
  std::vector<T> buffers(size_t(n_threads) * M * stride, T(0));
#pragma omp parallel num_threads(n_threads)
  {
    T* acc = buffers.data() + size_t(thread_id()) * M * stride;
    Tile<T> tile(g.tile * g.tile);
    std::vector<T> tr(g.tile * g.tile), behind(g.tile * g.tile * C), grad(stride);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < total; ++t) {
      tile.set(g, t);
      int64_t end = offsets[t];
      for (int64_t p = 0; p < tile.n; ++p) {
        tr[p] = trans[tile.index[p]];
        end = std::max(end, int64_t(last[tile.index[p]]));
      }
      std::fill(behind.begin(), behind.begin() + tile.n * C, T(0));
      for (int64_t k = end - 1; k >= offsets[t]; --k) {
        const int64_t e = ids[k];
        if (!tile.sigmas(means2d, conics, e, reach[e])) continue;
        const T* cn = conics + 3 * e;
        const T* c = colors + e * C;
        const bool clamp_possible = opac[e] > T(kAlphaMax);
        std::fill(grad.begin(), grad.end(), T(0));
        bool touched = false;
        for (int64_t p = 0; p < tile.n; ++p) {
          const int64_t q = tile.index[p];
          if (k >= last[q] || tile.sigma[p] > reach[e]) continue;
          const T vis = std::exp(-tile.sigma[p]), a = opac[e] * vis;
          if (!(a >= T(kAlphaMin))) continue;
          const T alpha = std::min(a, T(kAlphaMax));
          const T ra = T(1) / (T(1) - alpha);
          tr[p] *= ra;  // transmittance in front of this entry
          const T w = alpha * tr[p];
          const T* vo = v_out + q * C;
          T* bh = behind.data() + p * C;
          T v_alpha = -trans[q] * ra * v_trans[q];
          for (int64_t ch = 0; ch < C; ++ch) {
            v_alpha += (c[ch] * tr[p] - bh[ch] * ra) * vo[ch];
            bh[ch] += c[ch] * w;
            grad[6 + ch] += w * vo[ch];
          }
          touched = true;
          if (clamp_possible && a > T(kAlphaMax)) continue;  // clamped alpha: no gradient to its inputs
          const T dx = means2d[2 * e] - tile.px[p], dy = means2d[2 * e + 1] - tile.py[p];
          const T v_sigma = -alpha * v_alpha;
          grad[0] += (cn[0] * dx + cn[1] * dy) * v_sigma;
          grad[1] += (cn[2] * dy + cn[1] * dx) * v_sigma;
          grad[2] += T(0.5) * dx * dx * v_sigma;
          grad[3] += dx * dy * v_sigma;
          grad[4] += T(0.5) * dy * dy * v_sigma;
          grad[5] += vis * v_alpha;
        }
        if (touched)
          for (int64_t i = 0; i < stride; ++i) acc[e * stride + i] += grad[i];
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
  const int64_t C = colors.size(1), M = colors.size(0);
  auto out = at::zeros({g.n_images, height, width, C}, colors.options());
  auto trans = at::ones({g.n_images, height, width}, colors.options());
  auto last = at::zeros({g.n_images, height, width}, colors.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "m3_composite_forward", [&] {
    forward_impl<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(),
                           colors.data_ptr<scalar_t>(), C, M, offsets.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), g,
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
