// Connected components on the CPU: two-pass union-find over runs.
//
// Pass 1 splits every row (d, h) into runs of foreground voxels along W. Rows are read 64 voxels at a time:
// SSE2 compares turn 64 bytes into a 64-bit foreground mask, runs come out of the mask with count-trailing-
// zeros, so an empty row costs a few instructions per 16 bytes and a run costs O(1), not O(length).
// Each run is joined (union-find, union toward the smaller run index, path halving) with the runs it touches
// in the already-visited neighbour rows: (d, h-1) and (d-1, h) for 6-connectivity, plus (d-1, h-1) and
// (d-1, h+1) for 18 and 26. Along W a neighbour run touches when the column ranges overlap, widened by one
// column where the connectivity allows a diagonal step in W (18: in-plane and through-plane edge rows;
// 26: all four rows). Labelling runs instead of voxels makes the union-find a few percent of the work.
//
// Threads take slabs of whole slices (a few slabs per thread, handed out dynamically, so one thread delayed
// by the OS does not stall the rest); each slab is labelled alone (it only touches its own runs), then the
// slab boundaries are merged serially (a few thousand runs at most). Small volumes stay on one thread. Because the union always links the
// larger root below the smaller one, parent[i] <= i, the root of a component is its first run in raster
// order, and one serial sweep numbers the components in raster order of their first voxel.
// Pass 2 writes the int32 labels row by row in parallel; output writing dominates the time.
#include "connected_components.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(RESUNET_WITH_OPENMP)
#include <omp.h>
#endif

namespace resunet {

void CheckConnectivity(int connectivity) {
  if (connectivity != 6 && connectivity != 18 && connectivity != 26) {
    throw std::invalid_argument("connectivity must be 6, 18 or 26, got " + std::to_string(connectivity));
  }
}

namespace {

// Already-visited neighbour row (d + dd, h + dh) and how far a touching run may be shifted along W.
struct NeighbourRow {
  int dd;
  int dh;
  int widen;
};

int NeighbourRows(int connectivity, NeighbourRow* rows) {
  if (connectivity == 6) {
    rows[0] = {0, -1, 0};
    rows[1] = {-1, 0, 0};
    return 2;
  }
  if (connectivity == 18) {
    rows[0] = {0, -1, 1};
    rows[1] = {-1, 0, 1};
    rows[2] = {-1, -1, 0};
    rows[3] = {-1, 1, 0};
    return 4;
  }
  rows[0] = {0, -1, 1};
  rows[1] = {-1, -1, 1};
  rows[2] = {-1, 0, 1};
  rows[3] = {-1, 1, 1};
  return 4;
}

#if defined(__SSE2__)
using ByteMax = __m128i;  // running per-lane maximum of the bytes read
inline ByteMax ByteMaxInit() { return _mm_setzero_si128(); }
inline uint8_t ByteMaxReduce(ByteMax m) {
  m = _mm_max_epu8(m, _mm_srli_si128(m, 8));
  m = _mm_max_epu8(m, _mm_srli_si128(m, 4));
  m = _mm_max_epu8(m, _mm_srli_si128(m, 2));
  m = _mm_max_epu8(m, _mm_srli_si128(m, 1));
  return static_cast<uint8_t>(_mm_cvtsi128_si32(m) & 0xFF);
}
#else
using ByteMax = uint8_t;
inline ByteMax ByteMaxInit() { return 0; }
inline uint8_t ByteMaxReduce(ByteMax m) { return m; }
#endif

// 64 voxels -> 64-bit foreground mask (bit k = voxel k); also folds the bytes into a running maximum.
template <Foreground F>
inline uint64_t ForegroundBits64(const uint8_t* p, ByteMax& vmax) {
#if defined(__SSE2__)
  const __m128i zero = _mm_setzero_si128();
  const __m128i two = _mm_set1_epi8(2);
  uint64_t bits = 0;
  for (int k = 0; k < 4; ++k) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * k));
    vmax = _mm_max_epu8(vmax, v);
    uint32_t m;
    if constexpr (F == Foreground::kNonZero) {
      m = ~static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero))) & 0xFFFFu;
    } else {
      m = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, two)));
    }
    bits |= static_cast<uint64_t>(m) << (16 * k);
  }
  return bits;
#else
  uint64_t bits = 0;
  for (int k = 0; k < 64; ++k) {
    const bool fg = F == Foreground::kNonZero ? p[k] != 0 : p[k] == 2;
    bits |= static_cast<uint64_t>(fg) << k;
    vmax = std::max(vmax, p[k]);
  }
  return bits;
#endif
}

template <Foreground F>
void ScanRow(const uint8_t* row, int32_t width, std::vector<Run>& out, uint8_t& max_value) {
  bool in_run = false;
  int32_t start = 0;
  ByteMax vmax = ByteMaxInit();
  for (int32_t base = 0; base < width; base += 64) {
    const int32_t n = std::min<int32_t>(64, width - base);
    uint64_t bits;
    if (n == 64) {
      bits = ForegroundBits64<F>(row + base, vmax);
    } else {
      alignas(16) uint8_t tail[64] = {0};  // zero padding is background for both rules
      std::memcpy(tail, row + base, static_cast<size_t>(n));
      bits = ForegroundBits64<F>(tail, vmax);
    }
    if (in_run) {
      const uint64_t gaps = ~bits;
      if (gaps == 0) continue;  // the run goes on through all 64 voxels
      const int e = __builtin_ctzll(gaps);
      out.push_back({start, base + e});
      in_run = false;
      bits &= ~0ULL << e;
    }
    while (bits != 0) {
      const int s = __builtin_ctzll(bits);
      const uint64_t gaps = ~bits & (~0ULL << s);
      if (gaps == 0) {  // runs into the next chunk
        in_run = true;
        start = base + s;
        break;
      }
      const int e = __builtin_ctzll(gaps);
      out.push_back({base + s, base + e});
      bits &= ~0ULL << e;
    }
  }
  if (in_run) out.push_back({start, width});
  max_value = std::max(max_value, ByteMaxReduce(vmax));  // once per row, not per chunk
}

inline uint32_t Find(uint32_t* parent, uint32_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving: parents only ever decrease
    x = parent[x];
  }
  return x;
}

inline void Union(uint32_t* parent, uint32_t a, uint32_t b) {
  a = Find(parent, a);
  b = Find(parent, b);
  if (a < b) {
    parent[b] = a;
  } else if (b < a) {
    parent[a] = b;
  }
}

// Joins the runs of row `cur` with the touching runs of row `nbr`.
inline void MergeRows(const RunLabeling& lab, uint32_t* parent, int64_t cur, int64_t nbr, int widen) {
  const int64_t c0 = lab.row_start[cur], c1 = lab.row_start[cur + 1];
  const int64_t n0 = lab.row_start[nbr], n1 = lab.row_start[nbr + 1];
  if (c0 == c1 || n0 == n1) return;
  const Run* runs = lab.runs.data();
  int64_t j = n0;
  for (int64_t i = c0; i < c1; ++i) {
    const Run a = runs[i];
    while (j < n1 && runs[j].end + widen <= a.begin) ++j;
    for (int64_t k = j; k < n1 && runs[k].begin < a.end + widen; ++k) {
      Union(parent, static_cast<uint32_t>(i), static_cast<uint32_t>(k));
    }
  }
}

// Merges row r = (d, h) with its neighbour rows, skipping slices before `first_slice`.
inline void MergeRow(const RunLabeling& lab, uint32_t* parent, int64_t d, int64_t h, int64_t first_slice,
                     const NeighbourRow* nbrs, int n_nbrs) {
  const int64_t H = lab.shape.height;
  const int64_t r = d * H + h;
  for (int q = 0; q < n_nbrs; ++q) {
    const int64_t nd = d + nbrs[q].dd, nh = h + nbrs[q].dh;
    if (nd < first_slice || nh < 0 || nh >= H) continue;
    MergeRows(lab, parent, r, nd * H + nh, nbrs[q].widen);
  }
}

template <Foreground F>
void ScanSlab(const uint8_t* volume, const VolumeShape& shape, int64_t d0, int64_t d1,
              const std::vector<uint8_t>* row_filter, std::vector<Run>& runs, int64_t* row_counts,
              uint8_t& max_value) {
  const int64_t H = shape.height, W = shape.width;
  for (int64_t r = d0 * H; r < d1 * H; ++r) {
    const size_t before = runs.size();
    if (row_filter == nullptr || (*row_filter)[r] != 0) {
      ScanRow<F>(volume + r * W, static_cast<int32_t>(W), runs, max_value);
    }
    row_counts[r] = static_cast<int64_t>(runs.size() - before);
  }
}

int NumThreads() {
#if defined(RESUNET_WITH_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

RunLabeling LabelRunsCpu(const uint8_t* volume, const VolumeShape& shape, Foreground foreground, int connectivity,
                         const std::vector<uint8_t>* row_filter) {
  CheckConnectivity(connectivity);
  if (shape.width > std::numeric_limits<int32_t>::max() - 2) {
    throw std::invalid_argument("volume width must be below 2^31, got " + std::to_string(shape.width));
  }
  RunLabeling lab;
  lab.shape = shape;
  const int64_t D = shape.depth, H = shape.height;
  const int64_t n_rows = shape.rows();
  lab.row_start.assign(static_cast<size_t>(n_rows + 1), 0);
  if (shape.voxels() == 0) return lab;

  // Slabs of whole slices, a few per thread so a thread that the OS delays does not hold up the others
  // (no more slabs than slices; one slab for small volumes).
  const int n_threads = shape.voxels() >= kParallelMinVoxels ? NumThreads() : 1;
  const int64_t n_slabs = std::max<int64_t>(1, std::min<int64_t>(n_threads == 1 ? 1 : 4 * n_threads, D));
  std::vector<int64_t> slab_d(static_cast<size_t>(n_slabs + 1));
  for (int64_t s = 0; s <= n_slabs; ++s) slab_d[s] = D * s / n_slabs;
  std::vector<std::vector<Run>> slab_runs(static_cast<size_t>(n_slabs));
  std::vector<uint8_t> slab_max(static_cast<size_t>(n_slabs), 0);
  int64_t* row_counts = lab.row_start.data() + 1;

#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int64_t s = 0; s < n_slabs; ++s) {
    slab_runs[s].reserve(static_cast<size_t>((slab_d[s + 1] - slab_d[s]) * H));
    if (foreground == Foreground::kNonZero) {
      ScanSlab<Foreground::kNonZero>(volume, shape, slab_d[s], slab_d[s + 1], row_filter, slab_runs[s], row_counts,
                                     slab_max[s]);
    } else {
      ScanSlab<Foreground::kTumor>(volume, shape, slab_d[s], slab_d[s + 1], row_filter, slab_runs[s], row_counts,
                                   slab_max[s]);
    }
  }
  for (uint8_t m : slab_max) lab.max_value = std::max(lab.max_value, m);

  // Run offsets: prefix sum over rows (cheap next to the scan: one int64 per row).
  for (int64_t r = 0; r < n_rows; ++r) lab.row_start[r + 1] += lab.row_start[r];
  const int64_t n_runs = lab.row_start[n_rows];
  if (n_runs >= static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) {
    throw std::invalid_argument("volume has too many foreground runs (" + std::to_string(n_runs) +
                                ") for 32-bit run indices");
  }
  lab.runs.resize(static_cast<size_t>(n_runs));
  std::vector<uint32_t> parent(static_cast<size_t>(n_runs));
  NeighbourRow nbrs[4];
  const int n_nbrs = NeighbourRows(connectivity, nbrs);

#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int64_t s = 0; s < n_slabs; ++s) {
    const int64_t first = lab.row_start[slab_d[s] * H];
    std::copy(slab_runs[s].begin(), slab_runs[s].end(), lab.runs.begin() + first);
    std::vector<Run>().swap(slab_runs[s]);
    const int64_t last = lab.row_start[slab_d[s + 1] * H];
    for (int64_t i = first; i < last; ++i) parent[i] = static_cast<uint32_t>(i);
    for (int64_t d = slab_d[s]; d < slab_d[s + 1]; ++d) {
      for (int64_t h = 0; h < H; ++h) MergeRow(lab, parent.data(), d, h, slab_d[s], nbrs, n_nbrs);
    }
  }
  // Slab boundaries: the first slice of each slab against the last slice of the previous one.
  NeighbourRow back[4];
  int n_back = 0;
  for (int q = 0; q < n_nbrs; ++q) {
    if (nbrs[q].dd == -1) back[n_back++] = nbrs[q];
  }
  for (int64_t s = 1; s < n_slabs; ++s) {
    for (int64_t h = 0; h < H; ++h) MergeRow(lab, parent.data(), slab_d[s], h, 0, back, n_back);
  }

  // parent[i] < i for every non-root, so one forward sweep numbers roots in raster order.
  lab.label.resize(static_cast<size_t>(n_runs));
  int64_t count = 0;
  for (int64_t i = 0; i < n_runs; ++i) {
    const uint32_t p = parent[i];
    lab.label[i] = p == static_cast<uint32_t>(i) ? static_cast<int32_t>(++count) : lab.label[p];
    if (count > std::numeric_limits<int32_t>::max() - 1) {
      throw std::invalid_argument("more than 2^31 - 2 components do not fit int32 labels");
    }
  }
  lab.count = count;
  return lab;
}

void WriteRunLabelsCpu(const RunLabeling& lab, int32_t* labels) {
  const int64_t n_rows = lab.shape.rows(), W = lab.shape.width;
  if (lab.shape.voxels() == 0) return;
  const int64_t chunk = std::max<int64_t>(1, lab.shape.height);  // one slice per task
#pragma omp parallel for schedule(dynamic, chunk) if (lab.shape.voxels() >= kParallelMinVoxels)
  for (int64_t r = 0; r < n_rows; ++r) {
    int32_t* out = labels + r * W;
    int32_t pos = 0;
    for (int64_t i = lab.row_start[r]; i < lab.row_start[r + 1]; ++i) {
      const Run run = lab.runs[i];
      std::memset(out + pos, 0, sizeof(int32_t) * static_cast<size_t>(run.begin - pos));
      std::fill(out + run.begin, out + run.end, lab.label[i]);
      pos = run.end;
    }
    std::memset(out + pos, 0, sizeof(int32_t) * static_cast<size_t>(W - pos));
  }
}

int64_t ConnectedComponentsCpu(const uint8_t* mask, const VolumeShape& shape, int connectivity, int32_t* labels) {
  const RunLabeling lab = LabelRunsCpu(mask, shape, Foreground::kNonZero, connectivity);
  WriteRunLabelsCpu(lab, labels);
  return lab.count;
}

}  // namespace resunet
