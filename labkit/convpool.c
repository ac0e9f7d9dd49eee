// Fused 3x3 convolution (1 -> 16 channels, padding 1) and 2x2 max-pool on 28x28 images, with its
// backward: SeedCNN's first stage on CPU, without the (B, 16, 28, 28) map in memory. The 16
// channels form one vector (GCC vector extensions: AVX-512, 2x AVX2 or 4x SSE, as the CPU has).
#include <stdint.h>
#include <string.h>

#define H 28  // input side
#define P 14  // pooled side
#define NP (P * P)
#define MAXT 64

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint8_t v16b __attribute__((vector_size(16)));

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

// Zero-padded copy of one image: xp[1 + i][1 + j] = x[i][j].
static void pad_image(const float *x, float xp[H + 2][H + 4]) {
    memset(xp, 0, sizeof(float) * (H + 2) * (H + 4));
    for (int i = 0; i < H; i++) memcpy(&xp[1 + i][1], x + i * H, sizeof(float) * H);
}

static void load_weights(const float *w, v16f wt[9]) {  // (16, 9) -> one channel vector per tap
    for (int k = 0; k < 9; k++)
        for (int c = 0; c < 16; c++) wt[k][c] = w[c * 9 + k];
}

// out (B, 196, 16) = max over the 2x2 pool window of conv(x) + bias, channels last (one vector
// per pooled pixel); arg (B, 196, 16), if given, = the winning offset (0..3, row-major), the first
// on ties and NaN winning, as max_pool2d's.
void convpool_forward(const float *x, const float *w, const float *bias, float *out, uint8_t *arg,
                      int64_t B, int nthreads) {
    v16f wt[9], bv;
    load_weights(w, wt);
    for (int c = 0; c < 16; c++) bv[c] = bias[c];
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        float xp[H + 2][H + 4];
        pad_image(x + b * H * H, xp);
        for (int pi = 0; pi < P; pi++)
            for (int pj = 0; pj < P; pj++) {
                v16f m = bv;
                v16i k = {0};
                for (int o = 0; o < 4; o++) {
                    const int r = 2 * pi + (o >> 1), s = 2 * pj + (o & 1);
                    v16f acc = bv;
                    for (int di = 0; di < 3; di++)
                        for (int dj = 0; dj < 3; dj++) acc += wt[di * 3 + dj] * xp[r + di][s + dj];
                    if (o == 0) {
                        m = acc;
                    } else {
                        v16i take = (acc > m) | (acc != acc);
                        m = (v16f)(((v16i)acc & take) | ((v16i)m & ~take));
                        k = (o & take) | (k & ~take);
                    }
                }
                const int64_t at = (b * NP + pi * P + pj) * 16;
                memcpy(out + at, &m, sizeof m);
                if (arg) {
                    v16b kb = __builtin_convertvector(k, v16b);
                    memcpy(arg + at, &kb, sizeof kb);
                }
            }
    }
}

// dw (16, 9) and db (16) from the forward's arg and dLoss/dout = g @ mh, where g (B, n) is the
// gradient at the logits and mh (n, 196 * 16) the linear map from out to the logits (SeedCNN's
// fc2 @ fc1, columns channels last): dLoss/dout is formed pixel by pixel, never stored. Each
// thread sums a fixed slice of the batch and the slices are added in order: deterministic.
void convpool_backward(const float *x, const float *g, const float *mh, int n, const uint8_t *arg,
                       float *dw, float *db, int64_t B, int nthreads) {
    v16f acc_w[MAXT][9], acc_b[MAXT];
    if (nthreads > MAXT) nthreads = MAXT;
    if (nthreads < 1) nthreads = 1;
    int used = 1;
    #pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0) used = nt;
        v16f sw[9] = {{0}}, sb = {0};
        for (int64_t b = B * t / nt; b < B * (t + 1) / nt; b++) {
            float xp[H + 2][H + 4];
            pad_image(x + b * H * H, xp);
            for (int pi = 0; pi < P; pi++)
                for (int pj = 0; pj < P; pj++) {
                    const int64_t at = (b * NP + pi * P + pj) * 16;
                    v16f gp = {0}, mk;
                    for (int k = 0; k < n; k++) {
                        memcpy(&mk, mh + (int64_t)k * NP * 16 + (pi * P + pj) * 16, sizeof mk);
                        gp += g[b * n + k] * mk;
                    }
                    v16b ab;
                    memcpy(&ab, arg + at, sizeof ab);
                    const v16i ap = __builtin_convertvector(ab, v16i);
                    sb += gp;
                    for (int o = 0; o < 4; o++) {
                        const int r = 2 * pi + (o >> 1), s = 2 * pj + (o & 1);
                        const v16f gm = (v16f)((v16i)gp & (ap == o));
                        for (int di = 0; di < 3; di++)
                            for (int dj = 0; dj < 3; dj++) sw[di * 3 + dj] += gm * xp[r + di][s + dj];
                    }
                }
        }
        for (int k = 0; k < 9; k++) acc_w[t][k] = sw[k];
        acc_b[t] = sb;
    }
    v16f sw[9] = {{0}}, sb = {0};
    for (int t = 0; t < used; t++) {
        for (int k = 0; k < 9; k++) sw[k] += acc_w[t][k];
        sb += acc_b[t];
    }
    for (int c = 0; c < 16; c++) {
        for (int k = 0; k < 9; k++) dw[c * 9 + k] = sw[k][c];
        db[c] = sb[c];
    }
}
