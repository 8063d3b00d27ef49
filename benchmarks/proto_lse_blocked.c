/* Prototype, not part of tvmred: the LogSumExp loop tvmred's CPU schedule runs today (online:
 * one running max, a rescale every pair) beside a blocked two-pass loop (per block of B = 16 j:
 * the block's F kept in L1, its max, then a plain sum of exp(F - max), one rescale a block),
 * in C with the same exp (mathfns.exp_neg's reduction, degree-6 polynomial and clamp), 32-row
 * blocks vectorised over the rows.  It measures what a blocked CPU schedule would gain before
 * one is written (the next step for issue 21's AVX2 LogSumExp and issue 24's AVX2 Sinkhorn).
 * No tails: M a multiple of 32, N of 16.
 *
 *   gcc -O3 -march=haswell -fopenmp -ffp-contract=fast -fno-trapping-math \
 *       benchmarks/proto_lse_blocked.c -lm -o /tmp/lse && OMP_NUM_THREADS=2 /tmp/lse
 *
 * (-fno-trapping-math: without it gcc does not if-convert the selects and leaves the online
 * loop scalar with AVX2.)  Softmin -g |x_i - y_j|^2, g = 10, M = N = 1e4, float32, 2 threads,
 * this project's 2-vCPU Xeon (Emerald Rapids), gcc 12, 2026-12-06, busy host:
 *   AVX2 (-march=haswell):  online 46.6-63.3 ms, blocked 31.8-41.6 ms: 1.46-1.52x
 *   AVX-512 (-march=native): online 28.4-30.4 ms, blocked 20.4-21.8 ms: 1.39-1.41x
 * tvmred's own online kernel took ~45 ms (AVX2) and ~25 ms (AVX-512) in the same hour, so the
 * online loop here is a fair stand-in.  Blocked vs a float64 reference: 1.1e-6. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>
#include <time.h>
#define RB 32
#define B 16
static inline float expneg(float y) {  // e^-y, y >= 0, clamp at 87.3 (no flush)
  float yc = y < 87.3f ? y : 87.3f;
  float t = yc * -1.44269504f + 12582912.0f;
  int32_t bits; memcpy(&bits, &t, 4);
  float n = t - 12582912.0f;
  float rn = yc + n * 0.693359375f + n * -2.12194440e-4f;
  float q = 0.001381461275741458f;
  q = q * rn - 0.008368710055947304f; q = q * rn + 0.04166838899254799f;
  q = q * rn - 0.1666652113199234f;   q = q * rn + 0.4999999403953552f;
  q = q * rn - 1.0f; q = q * rn + 1.0f;  // e^-rn
  int32_t e = (bits - (0x4B400000 - 127)) << 23; float two; memcpy(&two, &e, 4);
  return q * two;
}
void online(int M, int N, const float *x, const float *y, float g, float *mo, float *so) {
  #pragma omp parallel for
  for (int ib = 0; ib < M / RB; ib++) {
    float x0[RB], x1[RB], x2[RB], m[RB], s[RB];
    for (int r = 0; r < RB; r++) { x0[r] = x[(ib*RB+r)*3]; x1[r] = x[(ib*RB+r)*3+1]; x2[r] = x[(ib*RB+r)*3+2]; m[r] = -INFINITY; s[r] = 0; }
    for (int j = 0; j < N; j++) {
      float y0 = y[3*j], y1 = y[3*j+1], y2 = y[3*j+2];
      #pragma omp simd
      for (int r = 0; r < RB; r++) {
        float d0 = x0[r]-y0, d1 = x1[r]-y1, d2 = x2[r]-y2;
        float F = -(d0*d0 + d1*d1 + d2*d2) * g;
        int big = m[r] >= F; int same = m[r] == F;
        float ev = expneg(fabsf(m[r] - F));
        float e = same ? 1.0f : ev;
        float sb = big ? s[r] : 1.0f, ss = big ? 1.0f : s[r];
        m[r] = big ? m[r] : F; s[r] = sb + ss * e;
      }
    }
    for (int r = 0; r < RB; r++) { mo[ib*RB+r] = m[r]; so[ib*RB+r] = s[r]; }
  }
}
void blocked(int M, int N, const float *x, const float *y, float g, float *mo, float *so) {
  #pragma omp parallel for
  for (int ib = 0; ib < M / RB; ib++) {
    float x0[RB], x1[RB], x2[RB], m[RB], s[RB], Fb[B][RB], bm[RB], bs[RB];
    for (int r = 0; r < RB; r++) { x0[r] = x[(ib*RB+r)*3]; x1[r] = x[(ib*RB+r)*3+1]; x2[r] = x[(ib*RB+r)*3+2]; m[r] = -INFINITY; s[r] = 0; }
    for (int jb = 0; jb < N / B; jb++) {
      #pragma omp simd
      for (int r = 0; r < RB; r++) bm[r] = -INFINITY;
      for (int jj = 0; jj < B; jj++) {
        int j = jb*B + jj; float y0 = y[3*j], y1 = y[3*j+1], y2 = y[3*j+2];
        #pragma omp simd
        for (int r = 0; r < RB; r++) {
          float d0 = x0[r]-y0, d1 = x1[r]-y1, d2 = x2[r]-y2;
          float F = -(d0*d0 + d1*d1 + d2*d2) * g;
          Fb[jj][r] = F; bm[r] = bm[r] > F ? bm[r] : F;
        }
      }
      #pragma omp simd
      for (int r = 0; r < RB; r++) bs[r] = 0;
      for (int jj = 0; jj < B; jj++) {
        #pragma omp simd
        for (int r = 0; r < RB; r++) bs[r] += expneg(bm[r] - Fb[jj][r]);
      }
      #pragma omp simd
      for (int r = 0; r < RB; r++) {
        int big = m[r] >= bm[r]; int same = m[r] == bm[r];
        float ev = expneg(fabsf(m[r] - bm[r]));
        float e = same ? 1.0f : ev;
        float sb = big ? s[r] : bs[r], ss = big ? bs[r] : s[r];
        m[r] = big ? m[r] : bm[r]; s[r] = sb + ss * e;
      }
    }
    for (int r = 0; r < RB; r++) { mo[ib*RB+r] = m[r]; so[ib*RB+r] = s[r]; }
  }
}
static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main() {
  int M = 10016, N = 10000; float g = 10;
  float *x = malloc(M*12), *y = malloc(N*12), *m1 = malloc(M*4), *s1 = malloc(M*4), *m2 = malloc(M*4), *s2 = malloc(M*4);
  srand(0); for (int k = 0; k < M*3; k++) x[k] = rand() / (float)RAND_MAX; for (int k = 0; k < N*3; k++) y[k] = rand() / (float)RAND_MAX;
  online(M, N, x, y, g, m1, s1); blocked(M, N, x, y, g, m2, s2);
  double err = 0; for (int i = 0; i < M; i++) { double a = m1[i] + log(s1[i]), b = m2[i] + log(s2[i]); err = fmax(err, fabs(a - b)); }
  // float64 reference for row 0..99
  double rerr = 0; for (int i = 0; i < 100; i++) { double mx = -1e300, acc = 0; for (int j = 0; j < N; j++) { double d = 0; for (int k = 0; k < 3; k++) { double t = (double)x[3*i+k] - y[3*j+k]; d += t*t; } double F = -d * g; if (F > mx) { acc = acc * exp(mx - F) + 1; mx = F; } else acc += exp(F - mx); } rerr = fmax(rerr, fabs(mx + log(acc) - (m2[i] + log(s2[i])))); }
  printf("online vs blocked max |diff| %.3g, blocked vs float64 %.3g\n", err, rerr);
  double to = 1e9, tb = 1e9;
  for (int rep = 0; rep < 15; rep++) {
    double t = now(); online(M, N, x, y, g, m1, s1); to = fmin(to, now() - t);
    t = now(); blocked(M, N, x, y, g, m2, s2); tb = fmin(tb, now() - t);
  }
  printf("online %.2f ms  blocked %.2f ms  ratio %.2f\n", to*1e3, tb*1e3, to/tb);
}
