/* Prototype, not part of tvmred: where an AVX2 ArgKMin (K = 10, D = 3) spends its time, and
 * whether the insertion can be made cheaper -- measured before a schedule is written (issue
 * 21: ArgKMin with AVX2 kernels is 4.3-5.3x pykeops, the goal 10x).  Rows in blocks of 8 (one
 * ymm) or 16, SoA; the distance |x_i - y_j|^2 as tvmred computes it (3 sub, mul, 2 FMA).
 *   - "vector insertion": tvmred's scheme -- a guard per j (any lane below its K-th value?),
 *     then the sorted-insertion network on whole vectors (2K compares, 4K blends);
 *   - "scalar insertion": the same guard, then each lane that passes inserted on its own
 *     (a scalar shift loop), its K-th value written back -- also with one guard per 2 / 4 / 8 j
 *     (their min against the K-th values) and with 16-row blocks;
 *   - "floor": the distance and the guard alone, a threshold that almost never passes, no
 *     K-list -- the best any insertion scheme could reach.
 *
 *   gcc -O3 -march=haswell -fopenmp -ffp-contract=fast benchmarks/proto_kselect_avx2.c -lm \
 *       -o /tmp/ks && OMP_NUM_THREADS=2 /tmp/ks
 *
 * M = N = 1e4, float32, 2 threads, this project's 2-vCPU Xeon (Emerald Rapids), gcc 12,
 * 2026-12-06, busy host, four runs (the scalar variants give the same indices as the vector
 * one, checked below):
 *   vector insertion, guard/j, 8 rows   25.4-27.5 ms  1.00x
 *   scalar insertion, guard/j, 8 rows   27.7-28.5 ms  0.92-0.96x
 *   scalar, guard/4 j or /8 j, 8 rows   30.4-32.5 ms  0.84-0.86x
 *   scalar, guard/j .. /4 j, 16 rows    30.1-33.9 ms  0.79-0.87x
 *   floor, guard/j                      12.7-13.9 ms  1.95-2.16x
 *   floor, guard/4 j                     9.9-11.7 ms  2.31-2.77x
 * In the same minutes bench_suite.py (AVX2 kernels) gave tvmred 31.9 ms, pykeops 168 ms (5.3x).
 * So: per-lane scalar insertion is slower than the vector network (its stores, bit loops and
 * branches cost more than the blends they save), and even with no insertion at all the
 * 8-lane loop is only 2.0-2.8x faster than the vector scheme.  10x pykeops in that run is
 * 16.8 ms: the insertions would have to cost 3-7 ms above the floor, where the vector
 * network costs 12-15 ms and the scalar one more.
 * On a 2-vCPU AMD EPYC Zen 4 (gcc -march=znver3, 2026-12-06, two runs): vector insertion
 * 12.0-12.2 ms, scalar 17.9-20.4 ms (0.59-0.68x), floor 4.7-5.1 ms (2.4-2.5x) -- the same
 * picture.  tvmred's AVX2 kernel took 17 ms there until its row block's state moved from
 * TVM's heap workspace to the stack (12.4-14 ms since; pykeops 106-131 ms). */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <time.h>
#define K 10
static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
/* x: SoA per block of 8 rows; y: N x 3 AoS. out: M x K indices */
static inline __m256 dist(__m256 x0, __m256 x1, __m256 x2, const float *yj) {
  __m256 d0 = _mm256_sub_ps(x0, _mm256_broadcast_ss(yj)), d1 = _mm256_sub_ps(x1, _mm256_broadcast_ss(yj + 1)), d2 = _mm256_sub_ps(x2, _mm256_broadcast_ss(yj + 2));
  return _mm256_fmadd_ps(d2, d2, _mm256_fmadd_ps(d1, d1, _mm256_mul_ps(d0, d0)));
}
/* (a) vector insertion network, guard per j */
void vec_ins(int M, int N, const float *x, const float *y, int *out) {
  #pragma omp parallel for schedule(static)
  for (int b = 0; b < M / 8; b++) {
    __m256 x0 = _mm256_loadu_ps(x + 24*b), x1 = _mm256_loadu_ps(x + 24*b + 8), x2 = _mm256_loadu_ps(x + 24*b + 16);
    __m256 v[K]; __m256i id[K];
    for (int k = 0; k < K; k++) { v[k] = _mm256_set1_ps(INFINITY); id[k] = _mm256_set1_epi32(-1); }
    for (int j = 0; j < N; j++) {
      __m256 d = dist(x0, x1, x2, y + 3*j);
      if (!_mm256_movemask_ps(_mm256_cmp_ps(d, v[K-1], _CMP_LT_OQ))) continue;
      __m256i jv = _mm256_set1_epi32(j);
      for (int k = K - 1; k >= 0; k--) {  // v[k] = d < v[k-1] ? v[k-1] : (d < v[k] ? d : v[k])
        __m256 lt = _mm256_cmp_ps(d, v[k], _CMP_LT_OQ);
        __m256 nv = _mm256_blendv_ps(v[k], d, lt); __m256i ni = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(id[k]), _mm256_castsi256_ps(jv), lt));
        if (k > 0) { __m256 ltp = _mm256_cmp_ps(d, v[k-1], _CMP_LT_OQ); nv = _mm256_blendv_ps(nv, v[k-1], ltp); ni = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(ni), _mm256_castsi256_ps(id[k-1]), ltp)); }
        v[k] = nv; id[k] = ni;
      }
    }
    int tmp[8];
    for (int k = 0; k < K; k++) { _mm256_storeu_si256((__m256i*)tmp, id[k]); for (int r = 0; r < 8; r++) out[(8*b + r)*K + k] = tmp[r]; }
  }
}
/* (b)/(c) scalar per-lane insertion, guard per J j's (J = 1 or 4), R row vectors per block */
static inline void ins1(float *v, int *id, float d, int j) {  // sorted ascending, K entries, d < v[K-1]
  int k = K - 1;
  while (k > 0 && d < v[k-1]) { v[k] = v[k-1]; id[k] = id[k-1]; k--; }
  v[k] = d; id[k] = j;
}
#define DEF_SCAL(NAME, J, R) \
void NAME(int M, int N, const float *x, const float *y, int *out) { \
  _Pragma("omp parallel for schedule(static)") \
  for (int b = 0; b < M / (8*R); b++) { \
    __m256 xs[R][3]; float v[R*8][K] __attribute__((aligned(32))); int id[R*8][K]; float kth[R*8] __attribute__((aligned(32))); \
    for (int r = 0; r < R; r++) for (int c = 0; c < 3; c++) xs[r][c] = _mm256_loadu_ps(x + 24*(b*R + r) + 8*c); \
    for (int l = 0; l < R*8; l++) { for (int k = 0; k < K; k++) { v[l][k] = INFINITY; id[l][k] = -1; } kth[l] = INFINITY; } \
    __m256 kv[R]; for (int r = 0; r < R; r++) kv[r] = _mm256_load_ps(kth + 8*r); \
    int j = 0; \
    for (; j + J <= N; j += J) { \
      __m256 d[R][J]; int any = 0; \
      for (int r = 0; r < R; r++) { __m256 mn; for (int t = 0; t < J; t++) { d[r][t] = dist(xs[r][0], xs[r][1], xs[r][2], y + 3*(j+t)); mn = t ? _mm256_min_ps(mn, d[r][t]) : d[r][t]; } \
        any |= _mm256_movemask_ps(_mm256_cmp_ps(mn, kv[r], _CMP_LT_OQ)) << (8*r); } \
      if (!any) continue; \
      for (int r = 0; r < R; r++) { if (!((any >> (8*r)) & 255)) continue; \
        for (int t = 0; t < J; t++) { float dd[8] __attribute__((aligned(32))); _mm256_store_ps(dd, d[r][t]); \
          int m = _mm256_movemask_ps(_mm256_cmp_ps(d[r][t], kv[r], _CMP_LT_OQ)); \
          while (m) { int l = __builtin_ctz(m); m &= m - 1; int L = 8*r + l; ins1(v[L], id[L], dd[l], j + t); kth[L] = v[L][K-1]; } \
          kv[r] = _mm256_load_ps(kth + 8*r); } } \
    } \
    for (; j < N; j++) for (int r = 0; r < R; r++) { __m256 dv = dist(xs[r][0], xs[r][1], xs[r][2], y + 3*j); float dd[8]; _mm256_storeu_ps(dd, dv); \
      for (int l = 0; l < 8; l++) { int L = 8*r + l; if (dd[l] < kth[L]) { ins1(v[L], id[L], dd[l], j); kth[L] = v[L][K-1]; } } kv[r] = _mm256_load_ps(kth + 8*r); } \
    for (int l = 0; l < R*8; l++) for (int k = 0; k < K; k++) out[(8*R*b + l)*K + k] = id[l][k]; \
  } \
}
DEF_SCAL(sc_j1_r1, 1, 1)
DEF_SCAL(sc_j4_r1, 4, 1)
DEF_SCAL(sc_j1_r2, 1, 2)
DEF_SCAL(sc_j4_r2, 4, 2)
DEF_SCAL(sc_j2_r2, 2, 2)
DEF_SCAL(sc_j8_r1, 8, 1)
/* the floor: the distance and the guard alone, J j's a guard, a fixed threshold that almost
 * never passes (0.3 % of the steps), no K-list at all */
#define DEF_FLOOR(NAME, J) \
void NAME(int M, int N, const float *x, const float *y, int *out) { \
  _Pragma("omp parallel for schedule(static)") \
  for (int b = 0; b < M / 8; b++) { \
    __m256 x0 = _mm256_loadu_ps(x + 24*b), x1 = _mm256_loadu_ps(x + 24*b + 8), x2 = _mm256_loadu_ps(x + 24*b + 16); \
    __m256 kth = _mm256_set1_ps(0.0005f); int hits = 0; \
    for (int j = 0; j + J <= N; j += J) { __m256 mn = dist(x0, x1, x2, y + 3*j); \
      for (int t = 1; t < J; t++) mn = _mm256_min_ps(mn, dist(x0, x1, x2, y + 3*(j+t))); \
      hits += _mm256_movemask_ps(_mm256_cmp_ps(mn, kth, _CMP_LT_OQ)) != 0; } \
    out[b*8*K] = hits; \
  } \
}
DEF_FLOOR(floor_j1, 1)
DEF_FLOOR(floor_j4, 4)
int main() {
  int M = 10000, N = 10000;
  float *x = malloc(M*3*4), *y = malloc(N*3*4), *xs = malloc(M*3*4); int *o0 = malloc(M*K*4), *o1 = malloc(M*K*4);
  srand(0); for (int i = 0; i < M*3; i++) x[i] = rand() / (float)RAND_MAX; for (int i = 0; i < N*3; i++) y[i] = rand() / (float)RAND_MAX;
  for (int b = 0; b < M/8; b++) for (int c = 0; c < 3; c++) for (int r = 0; r < 8; r++) xs[24*b + 8*c + r] = x[(8*b + r)*3 + c];
  typedef void (*F)(int, int, const float*, const float*, int*);
  F fs[] = {vec_ins, sc_j1_r1, sc_j4_r1, sc_j8_r1, sc_j1_r2, sc_j2_r2, sc_j4_r2, floor_j1, floor_j4}; const char *nm[] = {"vector insertion, guard/j, 8 rows", "scalar insertion, guard/j, 8 rows", "scalar, guard/4 j, 8 rows", "scalar, guard/8 j, 8 rows", "scalar, guard/j, 16 rows", "scalar, guard/2 j, 16 rows", "scalar, guard/4 j, 16 rows", "floor: no K-list, guard/j", "floor: no K-list, guard/4 j"};
  int nf = 9, nchk = 7; double best[9]; for (int f = 0; f < nf; f++) best[f] = 1e9;
  vec_ins(M, N, xs, y, o0);
  for (int f = 1; f < nchk; f++) { fs[f](M, N, xs, y, o1); int bad = 0; for (int i = 0; i < M*K; i++) bad += o0[i] != o1[i]; if (bad) printf("%s: %d mismatches\n", nm[f], bad); }
  for (int rep = 0; rep < 9; rep++) for (int f = 0; f < nf; f++) { double t = now(); fs[f](M, N, xs, y, o1); best[f] = fmin(best[f], now() - t); }
  for (int f = 0; f < nf; f++) printf("%-36s %7.2f ms  %.2fx\n", nm[f], best[f]*1e3, best[0]/best[f]);
}
