// Fused 3x3 convolution (1 -> 16 channels, padding 1) and 2x2 max-pool on 28x28 images, with its
// weight/bias gradient: BaselineCNN's first stage on CPU, without the (B, 16, 28, 28) map in memory.
// Then its two linear layers (no activation between) through M = W2 W1, forward and backward, split
// over the threads (MKL runs these 10-wide products on one thread).
// The 16 channels are processed VW at a time, VW = the CPU's float vector width as the compiler
// targets it (-march=...): 16 with AVX-512, 8 with AVX/AVX2, 4 with SSE or NEON. A 16-wide GCC
// vector type without AVX-512 is lowered to memory round-trips (40x slower on AVX2, see
// benchmarks/NOTES.md), so the width must follow the target, not be fixed.
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4  // SSE2 (every x86-64), NEON (arm64), or any 128-bit SIMD
#endif
#define NC (16 / VW)  // channel chunks
#define H 28          // input side
#define P 14          // pooled side
#define NP (P * P)
#define MAXT 64

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

// The loader checks these two before trusting the library.
int convpool_abi_version(void) { return 3; }
int convpool_vector_width(void) { return VW; }

// Zero-padded copy of one image: xp[1 + i][1 + j] = x[i][j].
static void pad_image(const float *x, float xp[H + 2][H + 4]) {
    memset(xp, 0, sizeof(float) * (H + 2) * (H + 4));
    for (int i = 0; i < H; i++) memcpy(&xp[1 + i][1], x + i * H, sizeof(float) * H);
}

// w (16, 9), bias (16) -> per chunk, one channel vector per tap and one for the bias.
static void load_weights(const float *w, const float *bias, vf wt[NC][9], vf bv[NC]) {
    for (int c = 0; c < 16; c++) {
        for (int k = 0; k < 9; k++) wt[c / VW][k][c % VW] = w[c * 9 + k];
        bv[c / VW][c % VW] = bias[c];
    }
}

// One pooled pixel of one chunk: max over the 2x2 window of conv + bias; *arg = the winning
// offset (0..3, row-major), the first on ties and NaN winning, as max_pool2d's.
static inline vf pool_pixel(const float xp[H + 2][H + 4], const vf wt[9], vf bv, int pi, int pj, vi *arg) {
    vf m = bv;
    vi k = {0};
    for (int o = 0; o < 4; o++) {
        const int r = 2 * pi + (o >> 1), s = 2 * pj + (o & 1);
        vf acc = bv;
        for (int di = 0; di < 3; di++)
            for (int dj = 0; dj < 3; dj++) acc += wt[di * 3 + dj] * xp[r + di][s + dj];
        if (o == 0) {
            m = acc;
        } else {
            vi take = (acc > m) | (acc != acc);
            m = (vf)(((vi)acc & take) | ((vi)m & ~take));
            k = (o & take) | (k & ~take);
        }
    }
    *arg = k;
    return m;
}

// out (B, 196, 16) = max_pool2d(conv2d(x, w, bias, padding=1), 2), channels last.
void convpool_forward(const float *x, const float *w, const float *bias, float *out, int64_t B, int nthreads) {
    vf wt[NC][9], bv[NC];
    load_weights(w, bias, wt, bv);
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        float xp[H + 2][H + 4];
        pad_image(x + b * H * H, xp);
        for (int c = 0; c < NC; c++) {
            const vf bc = bv[c];
            vf wc[9];
            memcpy(wc, wt[c], sizeof wc);
            for (int pi = 0; pi < P; pi++)
                for (int pj = 0; pj < P; pj++) {
                    vi k;
                    const vf m = pool_pixel(xp, wc, bc, pi, pj, &k);
                    memcpy(out + (b * NP + pi * P + pj) * 16 + c * VW, &m, sizeof m);
                }
        }
    }
}

// dw (16, 9) and db (16) from gout = dLoss/dout (B, 196, 16), channels last. The pool's winners
// are recomputed per image (nothing but x is kept from the forward). Each thread sums a fixed
// slice of the batch and the slices are added in order: deterministic for a thread count.
void convpool_backward(const float *x, const float *w, const float *bias, const float *gout, float *dw, float *db,
                       int64_t B, int nthreads) {
    vf wt[NC][9], bv[NC];
    load_weights(w, bias, wt, bv);
    vf acc_w[MAXT][NC][9], acc_b[MAXT][NC];
    if (nthreads > MAXT) nthreads = MAXT;
    if (nthreads < 1) nthreads = 1;
    int used = 1;
    #pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0) used = nt;
        vf sw[NC][9], sb[NC];
        memset(sw, 0, sizeof sw);
        memset(sb, 0, sizeof sb);
        for (int64_t b = B * t / nt; b < B * (t + 1) / nt; b++) {
            float xp[H + 2][H + 4];
            pad_image(x + b * H * H, xp);
            for (int c = 0; c < NC; c++) {
                vi arg[NP];  // winners first, then the gradient: fewer live registers in each loop
                const vf bc = bv[c];
                vf wc[9], swc[9], sbc = sb[c];
                memcpy(wc, wt[c], sizeof wc);
                memcpy(swc, sw[c], sizeof swc);
                for (int pi = 0; pi < P; pi++)
                    for (int pj = 0; pj < P; pj++) (void)pool_pixel(xp, wc, bc, pi, pj, &arg[pi * P + pj]);
                for (int pi = 0; pi < P; pi++)
                    for (int pj = 0; pj < P; pj++) {
                        vf gp;
                        memcpy(&gp, gout + (b * NP + pi * P + pj) * 16 + c * VW, sizeof gp);
                        const vi ap = arg[pi * P + pj];
                        sbc += gp;
                        for (int o = 0; o < 4; o++) {
                            const int r = 2 * pi + (o >> 1), s = 2 * pj + (o & 1);
                            const vf gm = (vf)((vi)gp & (ap == o));
                            for (int di = 0; di < 3; di++)
                                for (int dj = 0; dj < 3; dj++) swc[di * 3 + dj] += gm * xp[r + di][s + dj];
                        }
                    }
                memcpy(sw[c], swc, sizeof swc);
                sb[c] = sbc;
            }
        }
        memcpy(acc_w[t], sw, sizeof sw);
        memcpy(acc_b[t], sb, sizeof sb);
    }
    vf sw[NC][9], sb[NC];
    memset(sw, 0, sizeof sw);
    memset(sb, 0, sizeof sb);
    for (int t = 0; t < used; t++)
        for (int c = 0; c < NC; c++) {
            for (int k = 0; k < 9; k++) sw[c][k] += acc_w[t][c][k];
            sb[c] += acc_b[t][c];
        }
    for (int c = 0; c < 16; c++) {
        for (int k = 0; k < 9; k++) dw[c * 9 + k] = sw[c / VW][k][c % VW];
        db[c] = sb[c / VW][c % VW];
    }
}

// ---------------------------------------------------------------- fc2(fc1(h)) through M = W2 W1
// h (B, K) has its columns in (H, W, C) order (the pooled map, channels last): q = p * 16 + c;
// W1 (128, K) has them in (C, H, W) order: k = c * 196 + p. Every sum runs in a fixed order that
// does not depend on the thread count.
#define K (16 * NP)  // 3136 features
#define NJ 128       // fc1's outputs
#define NO 10        // logits
#define NV (K / VW)  // vectors per row

static inline int hwc_of_chw(int k) { return (k % NP) * 16 + k / NP; }
static inline int chw_of_hwc(int q) { return (q % 16) * NP + q / 16; }

static inline float hsum(vf v) {
    float s = 0;
    for (int l = 0; l < VW; l++) s += v[l];
    return s;
}

static inline vf loadv(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void storev(float *p, vf v) { memcpy(p, &v, sizeof v); }

// m (10, K) = W2 W1 in h's (H, W, C) column order; logits (B, 10) = h m^T + c0.
void chain_forward(const float *h, const float *w1, const float *w2, const float *c0, float *m, float *logits,
                   int64_t B, int nthreads) {
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (int v = 0; v < NV; v++) {  // a vector of W1's columns at a time
            vf acc[NO] = {{0}};
            for (int j = 0; j < NJ; j++) {
                const vf r = loadv(w1 + (int64_t)j * K + v * VW);
                for (int o = 0; o < NO; o++) acc[o] += w2[o * NJ + j] * r;
            }
            for (int o = 0; o < NO; o++)
                for (int l = 0; l < VW; l++) m[o * K + hwc_of_chw(v * VW + l)] = acc[o][l];
        }  // (implicit barrier: m is complete)
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *hb = h + b * K;
            vf acc[NO] = {{0}};
            for (int v = 0; v < NV; v++) {
                const vf x = loadv(hb + v * VW);
                for (int o = 0; o < NO; o++) acc[o] += x * loadv(m + o * K + v * VW);
            }
            for (int o = 0; o < NO; o++) logits[b * NO + o] = c0[o] + hsum(acc[o]);
        }
    }
}

// From g = dLoss/dlogits (B, 10): dh (B, K) = g m (h's column order); a (10, K) = g^T h in W1's
// (C, H, W) order; dw1 (128, K) = W2^T a; dw2a (10, 128) = a W1^T (the caller adds gs b1^T).
void chain_backward(const float *g, const float *h, const float *m, const float *w1, const float *w2, float *dh,
                    float *a, float *dw1, float *dw2a, int64_t B, int nthreads) {
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (int v = 0; v < NV; v++) {  // a vector of h's columns: dh's, then a's, so few registers are live
            vf mv[NO];
            for (int o = 0; o < NO; o++) mv[o] = loadv(m + o * K + v * VW);
            for (int64_t b = 0; b < B; b++) {
                vf d = g[b * NO] * mv[0];
                for (int o = 1; o < NO; o++) d += g[b * NO + o] * mv[o];
                storev(dh + b * K + v * VW, d);
            }
            vf acc[NO] = {{0}};
            for (int64_t b = 0; b < B; b++) {
                const vf x = loadv(h + b * K + v * VW);
                for (int o = 0; o < NO; o++) acc[o] += g[b * NO + o] * x;
            }
            for (int o = 0; o < NO; o++)
                for (int l = 0; l < VW; l++) a[o * K + chw_of_hwc(v * VW + l)] = acc[o][l];
        }  // (implicit barrier: a is complete)
        #pragma omp for schedule(static)
        for (int j = 0; j < NJ; j++) {  // a row of W1 at a time
            const float *w1j = w1 + (int64_t)j * K;
            float *dw1j = dw1 + (int64_t)j * K;
            float w2j[NO];
            for (int o = 0; o < NO; o++) w2j[o] = w2[o * NJ + j];
            for (int v = 0; v < NV; v++) {
                vf d = w2j[0] * loadv(a + v * VW);
                for (int o = 1; o < NO; o++) d += w2j[o] * loadv(a + o * K + v * VW);
                storev(dw1j + v * VW, d);
            }
            vf acc[NO] = {{0}};
            for (int v = 0; v < NV; v++) {
                const vf r = loadv(w1j + v * VW);
                for (int o = 0; o < NO; o++) acc[o] += r * loadv(a + o * K + v * VW);
            }
            for (int o = 0; o < NO; o++) dw2a[o * NJ + j] = hsum(acc[o]);
        }
    }
}
