/*
 * Optional compiled kernel for wavq's quantized tensors (SPEC.md section 5): products x W^T computed straight
 * from the packed 2..8-bit codes, one weight row at a time, so float32 weights are never materialised beyond
 * one row per thread.
 *
 * Float path (matmul): each weight row is dequantized exactly as formats.codecs.dequantize_packed does it,
 * w = (q - zero) * scale rounded once to float32, then + offset and the outlier columns of a decomposed tensor
 * (SPEC.md 5.3), into an L1-resident row buffer; the row is then dotted with every input row. The products are
 * numpy's; only the summation order differs (LANES independent partial sums, then a fixed pairwise reduction).
 *
 * Integer path (matmul_int8): activations come quantized to int8 per block of `act_block` columns with one
 * float32 scale per block (quantize_act). For every segment of columns lying in one weight group and one
 * activation block, sum((q - zero) * qx) is accumulated in int32 (exact: |q - zero| <= 255, |qx| <= 127, a
 * segment holds at most MAX_SEGMENT columns), then y += (float)acc * (weight scale * activation scale), each
 * step rounded once to float32, segments in increasing column order. That order is part of the contract:
 * kernel.reference_matmul_int8 repeats it in numpy and the tests require equality bit for bit.
 *
 * Integer codes (matmul_codes): the products of a weight with an activation spec (SPEC.md 5.5), under the
 * contract runtime/intlinear.py states and its numpy int_linear meets: int8 activation codes made by the caller,
 * exact integer sums per weight group, one float32 rescale per group, groups added in order. Weight rows are
 * unpacked a tile at a time into centered int16 codes shared by every input row (AVX2 vpmaddwd where the CPU
 * has it; vpmaddubsw on raw byte codes when codes and activations are small enough; a plain loop elsewhere: all
 * give the same integers, hence the same bits).
 *
 * Built with -ffp-contract=off so no multiply-add is fused behind the contract's back. No numpy headers: arrays
 * arrive through the buffer protocol and the Python wrapper (runtime/kernel.py) checks shapes and dtypes; the
 * C side re-checks every buffer length so a wrong call raises instead of reading out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define WQ_HAVE_THREADS 1
#else
#define WQ_HAVE_THREADS 0
#endif

/* The per-row loops are compiled twice on x86-64 with GCC: for AVX2 and for the baseline, and the loader picks
 * one by the CPU it runs on (an ifunc), so the build stays portable. Their helpers are inlined into each copy. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define ROW_LOOP __attribute__((target_clones("avx2", "default")))
#else
#define ROW_LOOP
#endif
#if defined(__GNUC__)
#define HELPER static inline __attribute__((always_inline))
#else
#define HELPER static inline
#endif

/* The integer-code product's inner loop is written with AVX2 intrinsics (register blocking the auto-vectorizer does
 * not find) in functions compiled for AVX2 only, called when the CPU reports AVX2 at run time; the portable loop
 * beside it computes the same integers and is what every other CPU runs (tests compare the two). */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define WQ_X86_AVX2 1
#define AVX2_FN __attribute__((target("avx2")))
#define AVX2_HELPER static inline __attribute__((always_inline, target("avx2")))
#else
#define WQ_X86_AVX2 0
#endif

#define LANES 16                   /* independent float partial sums per dot product (two AVX registers) */
#define MAX_THREADS 8
#define MIN_WORK_PER_THREAD (1 << 18) /* weights x input rows below which a second thread costs more than it saves */
#define CODES_PER_RUN 8            /* SPEC.md 5.1: every run of 8 codes is exactly `bits` bytes */
#define ACT_LEVELS 127             /* int8 activation codes are symmetric in -127..127 */
#define MAX_ACT_BLOCK 4096         /* keeps an int32 segment sum far from overflow: 4096 * 255 * 127 < 2^31 */
/* matmul_codes: columns whose products sum exactly in int32 in any order. A product qx * (q - z) of an int8 code
 * (|qx| <= 128) and a centered weight code (q, z in 0..255, |q - z| <= 255) has magnitude <= 32,640, so every
 * partial sum of at most 65,536 of them is <= 65,536 * 32,640 = 2,139,095,040 < 2^31 - 1 = 2,147,483,647; a
 * longer group is summed in pieces of this many columns, the pieces in int64 (exact far beyond any tensor). */
#define INT32_SPAN 65536
#define PIECE_PAD 32               /* bytes of an AVX2 vector: every piece is zero-padded to a multiple of 32 codes */
#define I16_VEC 16                 /* int16 codes per AVX2 vector */
#define INT16_MAX_SUM 32767        /* the narrow loop's int16 sums stay within this (no saturation, no wrap) */
/* The narrow loop's per-group reduction serves NR outputs, the int16 loop's NR x MR: with groups shorter than this
 * it measured slower than the int16 loop (1.4x at 32 columns), from this on faster. */
#define NARROW_MIN_GROUP 128
#define NR 4                       /* weight rows per step of the micro-kernel: NR x MR outputs fill one AVX vector */
#define MR 2                       /* input rows per step: 4 x 2 int32 accumulators + 6 operands fit 16 registers */
#define TILE_BYTES (64 << 10)      /* centered int16 codes unpacked at once: a tile stays in L2 for every input row */

typedef struct {
    const uint8_t *codes;    /* rows x row_bytes */
    const uint16_t *scales;  /* rows x ng, IEEE binary16 bits */
    const uint8_t *zeros;    /* rows x zrow_bytes, packed like codes; NULL when symmetric */
    const float *offset;     /* cols; NULL when not decomposed */
    const int64_t *ocols;    /* k strictly increasing column indices (validated by the wrapper) */
    const uint16_t *outliers; /* rows x k, binary16 */
    Py_ssize_t rows, row_bytes, zrow_bytes;
    int bits, cols, group, ng, k;
} tensor;

HELPER float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0) {
        f = (float)man * 5.9604644775390625e-8f; /* subnormal: man * 2^-24, exact */
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

/* Unpack `nrun` runs of 8 codes (SPEC.md 5.1). B is a constant in each instance so the shifts unroll. */
#define DEFINE_UNPACK(B)                                                                                   \
    HELPER void unpack##B(const uint8_t *restrict p, int nrun, uint8_t *restrict q) {                     \
        for (int j = 0; j < nrun; j++) {                                                                   \
            uint64_t r = 0, spread = 0;                                                                    \
            for (int i = 0; i < B; i++) r |= (uint64_t)p[j * B + i] << (8 * i);                            \
            for (int i = 0; i < CODES_PER_RUN; i++) spread |= ((r >> (B * i)) & ((1u << B) - 1)) << (8 * i); \
            for (int i = 0; i < CODES_PER_RUN; i++) q[CODES_PER_RUN * j + i] = (uint8_t)(spread >> (8 * i)); \
        }                                                                                                  \
    }
DEFINE_UNPACK(5)
DEFINE_UNPACK(6)
DEFINE_UNPACK(7)

/* 3 bits, the widest use below 4: the 24 bits of a run are spread to one code per byte by three branch-free
 * mask-and-shift steps (12-bit halves, 6-bit quarters, 3-bit codes), about 3.5x faster than a loop over codes. */
HELPER void unpack3(const uint8_t *restrict p, int nrun, uint8_t *restrict q) {
    for (int j = 0; j < nrun; j++) {
        uint64_t x = (uint64_t)p[3 * j] | (uint64_t)p[3 * j + 1] << 8 | (uint64_t)p[3 * j + 2] << 16;
        x = (x & 0xfffu) | (x & 0xfff000u) << 20;
        x = (x & 0x0000003f0000003fu) | (x & 0x00000fc000000fc0u) << 10;
        x = (x & 0x0007000700070007u) | (x & 0x0038003800380038u) << 5;
        for (int i = 0; i < CODES_PER_RUN; i++) q[CODES_PER_RUN * j + i] = (uint8_t)(x >> (8 * i));
    }
}

HELPER void unpack2(const uint8_t *restrict p, int nrun, uint8_t *restrict q) {
    for (int i = 0; i < 2 * nrun; i++) {
        uint8_t b = p[i];
        q[4 * i] = b & 3;
        q[4 * i + 1] = (b >> 2) & 3;
        q[4 * i + 2] = (b >> 4) & 3;
        q[4 * i + 3] = b >> 6;
    }
}

HELPER void unpack4(const uint8_t *restrict p, int nrun, uint8_t *restrict q) {
    for (int i = 0; i < 4 * nrun; i++) {
        q[2 * i] = p[i] & 15;
        q[2 * i + 1] = p[i] >> 4;
    }
}

HELPER void unpack(const uint8_t *p, int bits, int n, uint8_t *q) {
    int nrun = (n + CODES_PER_RUN - 1) / CODES_PER_RUN;
    switch (bits) {
    case 2: unpack2(p, nrun, q); break;
    case 3: unpack3(p, nrun, q); break;
    case 4: unpack4(p, nrun, q); break;
    case 5: unpack5(p, nrun, q); break;
    case 6: unpack6(p, nrun, q); break;
    case 7: unpack7(p, nrun, q); break;
    default: memcpy(q, p, (size_t)nrun * CODES_PER_RUN); break;
    }
}

static int padded(int n) { return (n + CODES_PER_RUN - 1) / CODES_PER_RUN * CODES_PER_RUN; }

/* Per-row scratch, one per thread. */
typedef struct {
    uint8_t *q, *z;
    float *w;
    int16_t *d;
} scratch;

static int scratch_init(scratch *s, const tensor *t) {
    s->q = malloc((size_t)padded(t->cols));
    s->z = malloc((size_t)padded(t->ng));
    s->w = malloc(sizeof(float) * (size_t)t->cols);
    s->d = malloc(sizeof(int16_t) * (size_t)t->cols);
    return (s->q && s->z && s->w && s->d) ? 0 : -1;
}

static void scratch_free(scratch *s) {
    free(s->q);
    free(s->z);
    free(s->w);
    free(s->d);
}

HELPER int zero_point(const tensor *t, const scratch *s, int j) {
    return t->zeros ? s->z[j] : 1 << (t->bits - 1);
}

/* Unpack row n's codes (and zero points) into the scratch. */
HELPER void load_row(const tensor *t, Py_ssize_t n, scratch *s) {
    unpack(t->codes + n * t->row_bytes, t->bits, t->cols, s->q);
    if (t->zeros) unpack(t->zeros + n * t->zrow_bytes, t->bits, t->ng, s->z);
}

/* Row n as float32, bit for bit as codecs.dequantize_packed (SPEC.md 5.2 and 5.3). */
HELPER void row_weights(const tensor *t, Py_ssize_t n, scratch *s, float *restrict w) {
    load_row(t, n, s);
    const uint16_t *sr = t->scales + n * t->ng;
    const uint8_t *restrict q = s->q;
    for (int j = 0; j < t->ng; j++) {
        int k0 = j * t->group, k1 = k0 + t->group < t->cols ? k0 + t->group : t->cols;
        float sc = half_to_float(sr[j]), z = (float)zero_point(t, s, j);
        for (int k = k0; k < k1; k++) w[k] = ((float)q[k] - z) * sc;
    }
    if (t->offset) {
        const float *restrict off = t->offset;
        for (int k = 0; k < t->cols; k++) w[k] = w[k] + off[k];
        for (int i = 0; i < t->k; i++) w[t->ocols[i]] = half_to_float(t->outliers[n * t->k + i]);
    }
}

#if defined(__GNUC__)
/* Two 8-float vectors hold the LANES partial sums: GCC's vector extension, split into SSE halves on a baseline
 * build, so the loop is vectorized whatever the auto-vectorizer decides. Same order as the portable version. */
typedef float v8f __attribute__((vector_size(32)));

HELPER float dot(const float *restrict a, const float *restrict b, int n) {
    v8f acc0 = {0}, acc1 = {0}, a0, a1, b0, b1;
    float tail = 0.0f;
    int k = 0;
    for (; k + LANES <= n; k += LANES) {
        memcpy(&a0, a + k, sizeof a0);
        memcpy(&a1, a + k + 8, sizeof a1);
        memcpy(&b0, b + k, sizeof b0);
        memcpy(&b1, b + k + 8, sizeof b1);
        acc0 += a0 * b0;
        acc1 += a1 * b1;
    }
    for (; k < n; k++) tail += a[k] * b[k];
    acc0 += acc1;
    float r[8];
    memcpy(r, &acc0, sizeof r);
    for (int half = 4; half; half /= 2)
        for (int l = 0; l < half; l++) r[l] += r[l + half];
    return r[0] + tail;
}
#else
HELPER float dot(const float *restrict a, const float *restrict b, int n) {
    float acc[LANES] = {0}, tail = 0.0f;
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[k + l] * b[k + l];
    for (; k < n; k++) tail += a[k] * b[k];
    for (int half = LANES / 2; half; half /= 2)
        for (int l = 0; l < half; l++) acc[l] += acc[l + half];
    return acc[0] + tail;
}
#endif

/* ---- row-range jobs, optionally split over threads ---- */

/* matmul_codes lays the columns out as pieces: each weight group, cut every INT32_SPAN columns, zero-padded to a
 * multiple of PIECE_PAD; codes and activations are stored in this layout (int16, or bytes for the narrow loop). */
typedef struct {
    int src, len, dst; /* columns [src, src + len) of the tensor, at [dst, dst + padded len) in the layout */
    int group;         /* the weight group the piece belongs to */
    int first, last;   /* the piece opens / closes its group (both for a group of at most INT32_SPAN columns) */
} piece;

typedef struct job job;
typedef int (*row_fn)(const job *, Py_ssize_t, Py_ssize_t);

struct job {
    row_fn fn;
    tensor t;
    float *out;          /* M x rows (matmul) or rows x cols (dequantize) */
    const float *x;      /* M x cols */
    const int16_t *qx16; /* M x cols: the int8 activation codes widened once per call */
    const float *sx;     /* M x nb */
    const int *seg;      /* nseg + 1 segment starts (the last is cols) */
    const piece *pieces; /* matmul_codes: the padded layout of the columns */
    const int8_t *qx8;   /* matmul_codes, narrow: M x kp activation codes in the piece layout */
    const int32_t *xsum; /* matmul_codes, narrow: M x npieces sums of each piece's activation codes */
    Py_ssize_t m;
    int act_block, nb, nseg;
    int npieces, kp, avx2; /* matmul_codes: pieces, padded columns, use the AVX2 loops */
    int narrow;            /* matmul_codes: > 0: the narrow loop, adding this many vpmaddubsw results in int16 */
};

ROW_LOOP static int dequantize_rows(const job *jb, Py_ssize_t n0, Py_ssize_t n1) {
    scratch s;
    int rc = scratch_init(&s, &jb->t);
    for (Py_ssize_t n = n0; n < n1 && rc == 0; n++) row_weights(&jb->t, n, &s, jb->out + n * jb->t.cols);
    scratch_free(&s);
    return rc;
}

ROW_LOOP static int matmul_rows(const job *jb, Py_ssize_t n0, Py_ssize_t n1) {
    const tensor *t = &jb->t;
    scratch s;
    int rc = scratch_init(&s, t);
    for (Py_ssize_t n = n0; n < n1 && rc == 0; n++) {
        row_weights(t, n, &s, s.w);
        for (Py_ssize_t m = 0; m < jb->m; m++) jb->out[m * t->rows + n] = dot(jb->x + m * t->cols, s.w, t->cols);
    }
    scratch_free(&s);
    return rc;
}

/* int16 x int16 -> int32 sums: the pattern compilers turn into pmaddwd (16 products per AVX2 instruction). */
HELPER int32_t idot(const int16_t *restrict d, const int16_t *restrict qx, int n) {
    int32_t acc = 0;
    for (int k = 0; k < n; k++) acc += (int32_t)d[k] * (int32_t)qx[k];
    return acc;
}

ROW_LOOP static int matmul_int8_rows(const job *jb, Py_ssize_t n0, Py_ssize_t n1) {
    const tensor *t = &jb->t;
    scratch s;
    int rc = scratch_init(&s, t);
    for (Py_ssize_t n = n0; n < n1 && rc == 0; n++) {
        load_row(t, n, &s);
        const uint16_t *sr = t->scales + n * t->ng;
        for (int j = 0; j < t->ng; j++) {
            int k0 = j * t->group, k1 = k0 + t->group < t->cols ? k0 + t->group : t->cols;
            int z = zero_point(t, &s, j);
            for (int k = k0; k < k1; k++) s.d[k] = (int16_t)(s.q[k] - z);
        }
        for (Py_ssize_t m = 0; m < jb->m; m++) {
            const int16_t *qx = jb->qx16 + m * t->cols;
            const float *sx = jb->sx + m * jb->nb;
            float y = 0.0f;
            for (int i = 0; i < jb->nseg; i++) {
                int k0 = jb->seg[i], k1 = jb->seg[i + 1];
                int32_t acc = idot(s.d + k0, qx + k0, k1 - k0);
                float scale = half_to_float(sr[k0 / t->group]) * sx[k0 / jb->act_block];
                y = y + (float)acc * scale;
            }
            jb->out[m * t->rows + n] = y;
        }
    }
    scratch_free(&s);
    return rc;
}

/* ---- integer activation codes times centered weight codes: runtime/intlinear.py's contract ----
 *
 * out[m, n] = sum over groups g in increasing order of float32(I[m, n, g]) * scale[n, g], from +0.0f, each product
 * and each sum rounded once to float32; I = sum_{k in g} qx[m, k] * (q[n, k] - zero[n, g]) exact (INT32_SPAN),
 * converted to float32 once, rounding to nearest even (the conversion instructions' default mode: the same
 * float32 numpy makes of the exact integer). A tile of weight rows is unpacked once into centered int16 codes
 * and meets every input row while it sits in cache: the encoder's 1500 rows and a decoding step's few share it. */

HELPER int padded_len(int n) { return (n + PIECE_PAD - 1) / PIECE_PAD * PIECE_PAD; }

/* Rows [n0, n0 + nr) in the piece layout, rows up to tr (a multiple of NR) zero: centered int16 codes q - z, or
 * for the narrow loop the raw uint8 codes q (d then holds kp bytes a row) with the zero points zt; the float32
 * scales and zero points in blocks of NR rows: sw[(r / NR) * ng * NR + g * NR + r % NR], the same for zt. */
ROW_LOOP static void unpack_tile(const job *jb, Py_ssize_t n0, int nr, int tr, scratch *s, void *d, float *sw,
                                 int32_t *zt) {
    const tensor *t = &jb->t;
    memset(d, 0, (jb->narrow ? 1 : sizeof(int16_t)) * (size_t)tr * (size_t)jb->kp);
    memset(sw, 0, sizeof(float) * (size_t)tr * (size_t)t->ng);
    memset(zt, 0, sizeof(int32_t) * (size_t)tr * (size_t)t->ng);
    for (int r = 0; r < nr; r++) {
        load_row(t, n0 + r, s);
        for (int i = 0; i < jb->npieces; i++) {
            const piece *p = &jb->pieces[i];
            const uint8_t *restrict q = s->q + p->src;
            if (jb->narrow) {
                memcpy((uint8_t *)d + (size_t)r * (size_t)jb->kp + p->dst, q, (size_t)p->len);
                continue;
            }
            int z = zero_point(t, s, p->group);
            int16_t *restrict o = (int16_t *)d + (size_t)r * (size_t)jb->kp + p->dst;
            for (int k = 0; k < p->len; k++) o[k] = (int16_t)(q[k] - z);
        }
        const uint16_t *sr = t->scales + (n0 + r) * t->ng;
        size_t at = (size_t)(r / NR) * (size_t)t->ng * NR + r % NR;
        for (int g = 0; g < t->ng; g++) {
            sw[at + g * NR] = half_to_float(sr[g]);
            zt[at + g * NR] = zero_point(t, s, g);
        }
    }
}

/* The plain loop: one output at a time, each piece's products summed in int32, a group's pieces in int64. */
ROW_LOOP static void tile_portable(const job *jb, const int16_t *d, const float *sw, Py_ssize_t n0, int nr) {
    const tensor *t = &jb->t;
    for (Py_ssize_t m = 0; m < jb->m; m++) {
        const int16_t *restrict x = jb->qx16 + m * jb->kp;
        for (int r = 0; r < nr; r++) {
            const int16_t *restrict w = d + (size_t)r * (size_t)jb->kp;
            const float *sb = sw + (size_t)(r / NR) * (size_t)t->ng * NR + r % NR;
            float y = 0.0f;
            int64_t sum = 0;
            for (int i = 0; i < jb->npieces; i++) {
                const piece *p = &jb->pieces[i];
                int32_t part = 0;
                for (int k = p->dst; k < p->dst + p->len; k++) part += (int32_t)w[k] * (int32_t)x[k];
                sum += part;
                if (!p->last) continue;
                y = y + (float)sum * sb[p->group * NR];
                sum = 0;
            }
            jb->out[m * t->rows + n0 + r] = y;
        }
    }
}

#if WQ_X86_AVX2
/* [sums of a0's, a1's, a2's, a3's lanes | the same of b0..b3]: integer adds, exact within INT32_SPAN's bound. */
AVX2_HELPER __m256i hsum8(__m256i a0, __m256i a1, __m256i a2, __m256i a3, __m256i b0, __m256i b1, __m256i b2,
                          __m256i b3) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(b0, b1), _mm256_hadd_epi32(b2, b3));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* NR weight rows (w, kp apart) times mr input rows (x0, x1; mr a constant 1 or MR after inlining): vpmaddwd
 * multiplies 16 int16 pairs and adds neighbours into 8 int32 lanes. y[j * NR + c] = output (input j, row c); the
 * eight outputs' float steps run side by side in one AVX vector, each lane the plain loop's scalar steps. */
AVX2_HELPER void block_avx2(const job *jb, const int16_t *w, const float *sb, const int16_t *x0, const int16_t *x1,
                            int mr, float *y) {
    const size_t kp = (size_t)jb->kp;
    __m256 acc = _mm256_setzero_ps();
    __m256i wide0 = _mm256_setzero_si256(), wide1 = wide0; /* int64 sums of a group's pieces when it has several */
    for (int i = 0; i < jb->npieces; i++) {
        const piece *p = &jb->pieces[i];
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int k = p->dst, end = p->dst + padded_len(p->len); k < end; k += I16_VEC) {
            __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + k));
            __m256i v1 = _mm256_loadu_si256((const __m256i *)(w + kp + k));
            __m256i v2 = _mm256_loadu_si256((const __m256i *)(w + 2 * kp + k));
            __m256i v3 = _mm256_loadu_si256((const __m256i *)(w + 3 * kp + k));
            __m256i xa = _mm256_loadu_si256((const __m256i *)(x0 + k));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(v0, xa));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(v1, xa));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(v2, xa));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(v3, xa));
            if (mr > 1) {
                __m256i xb = _mm256_loadu_si256((const __m256i *)(x1 + k));
                b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(v0, xb));
                b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(v1, xb));
                b2 = _mm256_add_epi32(b2, _mm256_madd_epi16(v2, xb));
                b3 = _mm256_add_epi32(b3, _mm256_madd_epi16(v3, xb));
            }
        }
        __m256i sums = hsum8(a0, a1, a2, a3, b0, b1, b2, b3);
        __m256 f;
        if (p->first && p->last) {
            f = _mm256_cvtepi32_ps(sums);
        } else {
            wide0 = _mm256_add_epi64(wide0, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(sums)));
            wide1 = _mm256_add_epi64(wide1, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(sums, 1)));
            if (!p->last) continue;
            int64_t v[2 * NR];
            _mm256_storeu_si256((__m256i *)v, wide0);
            _mm256_storeu_si256((__m256i *)(v + NR), wide1);
            f = _mm256_setr_ps((float)v[0], (float)v[1], (float)v[2], (float)v[3], (float)v[4], (float)v[5],
                               (float)v[6], (float)v[7]);
            wide0 = wide1 = _mm256_setzero_si256();
        }
        acc = _mm256_add_ps(acc, _mm256_mul_ps(f, _mm256_broadcast_ps((const __m128 *)(sb + p->group * NR))));
    }
    _mm256_storeu_ps(y, acc);
}

/* [sum of a0's lanes, a1's, a2's, a3's]. */
AVX2_HELPER __m128i hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* The narrow loop, for codes and activations small enough (matmul_codes sets jb->narrow): vpmaddubsw multiplies
 * 32 raw uint8 codes q by 32 int8 activation codes and adds neighbours into 16 int16 lanes, each of magnitude
 * <= 2 * (2^bits - 1) * max|qx|; jb->narrow of them are added in int16 (jb->narrow times that bound is at most
 * INT16_MAX_SUM: exact, no saturation), then widened to int32 by vpmaddwd with ones. That gives P = sum q * qx
 * over a piece (|P| <= INT32_SPAN * 255 * 128 < 2^31); I = P - z * S with S the piece's activation sum
 * (|z * S| <= 255 * 128 * INT32_SPAN < 2^31), in wrapping int32 arithmetic, which is exact since |I| < 2^31 too.
 * One input row times NR weight rows (d: kp bytes a row) per call: y[c] = output (row c). */
AVX2_HELPER void block_narrow(const job *jb, const uint8_t *w, const float *sb, const int32_t *zb, const int8_t *x,
                              const int32_t *xs, float *y) {
    const size_t kp = (size_t)jb->kp;
    const __m256i ones = _mm256_set1_epi16(1);
    const int chunk = jb->narrow * PIECE_PAD;
    __m128 acc = _mm_setzero_ps();
    __m256i wide = _mm256_setzero_si256();
    for (int i = 0; i < jb->npieces; i++) {
        const piece *p = &jb->pieces[i];
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int k0 = p->dst, end = p->dst + padded_len(p->len); k0 < end; k0 += chunk) {
            __m256i h0 = _mm256_setzero_si256(), h1 = h0, h2 = h0, h3 = h0;
            for (int k = k0, k1 = k0 + chunk < end ? k0 + chunk : end; k < k1; k += PIECE_PAD) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + k));
                h0 = _mm256_add_epi16(h0, _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(w + k)), xv));
                h1 = _mm256_add_epi16(h1, _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(w + kp + k)), xv));
                h2 = _mm256_add_epi16(h2,
                                      _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(w + 2 * kp + k)), xv));
                h3 = _mm256_add_epi16(h3,
                                      _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(w + 3 * kp + k)), xv));
            }
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(h0, ones));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(h1, ones));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(h2, ones));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(h3, ones));
        }
        __m128i z = _mm_loadu_si128((const __m128i *)(zb + p->group * NR));
        __m128i sums = _mm_sub_epi32(hsum4(a0, a1, a2, a3), _mm_mullo_epi32(z, _mm_set1_epi32(xs[i])));
        __m128 f;
        if (p->first && p->last) {
            f = _mm_cvtepi32_ps(sums);
        } else {
            wide = _mm256_add_epi64(wide, _mm256_cvtepi32_epi64(sums));
            if (!p->last) continue;
            int64_t v[NR];
            _mm256_storeu_si256((__m256i *)v, wide);
            f = _mm_setr_ps((float)v[0], (float)v[1], (float)v[2], (float)v[3]);
            wide = _mm256_setzero_si256();
        }
        acc = _mm_add_ps(acc, _mm_mul_ps(f, _mm_loadu_ps(sb + p->group * NR)));
    }
    _mm_storeu_ps(y, acc);
}

AVX2_FN static void tile_narrow(const job *jb, const uint8_t *d, const float *sw, const int32_t *zt, Py_ssize_t n0,
                                int nr) {
    const tensor *t = &jb->t;
    float y[NR];
    for (Py_ssize_t m = 0; m < jb->m; m++) {
        for (int r = 0; r < nr; r += NR) {
            size_t at = (size_t)(r / NR) * (size_t)t->ng * NR;
            block_narrow(jb, d + (size_t)r * (size_t)jb->kp, sw + at, zt + at, jb->qx8 + m * jb->kp,
                         jb->xsum + m * jb->npieces, y);
            int nv = nr - r < NR ? nr - r : NR;
            for (int c = 0; c < nv; c++) jb->out[m * t->rows + n0 + r + c] = y[c];
        }
    }
}

AVX2_FN static void tile_avx2(const job *jb, const int16_t *d, const float *sw, Py_ssize_t n0, int nr) {
    const tensor *t = &jb->t;
    float y[MR * NR];
    for (Py_ssize_t m = 0; m < jb->m; m += MR) {
        int mr = jb->m - m < MR ? (int)(jb->m - m) : MR;
        const int16_t *x0 = jb->qx16 + m * jb->kp, *x1 = mr > 1 ? x0 + jb->kp : x0;
        for (int r = 0; r < nr; r += NR) {
            const int16_t *w = d + (size_t)r * (size_t)jb->kp;
            const float *sb = sw + (size_t)(r / NR) * (size_t)t->ng * NR;
            if (mr == MR)
                block_avx2(jb, w, sb, x0, x1, MR, y);
            else
                block_avx2(jb, w, sb, x0, x1, 1, y);
            int nv = nr - r < NR ? nr - r : NR;
            for (int j = 0; j < mr; j++)
                for (int c = 0; c < nv; c++) jb->out[(m + j) * t->rows + n0 + r + c] = y[j * NR + c];
        }
    }
}
#endif

static int cpu_has_avx2(void) {
#if WQ_X86_AVX2
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

static int codes_rows(const job *jb, Py_ssize_t n0, Py_ssize_t n1) {
    const tensor *t = &jb->t;
    Py_ssize_t span = (n1 - n0 + NR - 1) / NR * NR, fit = TILE_BYTES / (2 * (Py_ssize_t)jb->kp) / NR * NR;
    int tr = (int)(fit < span ? fit : span);
    if (tr < NR) tr = NR; /* also for an empty range: the buffers are never empty */
    scratch s;
    int rc = scratch_init(&s, t);
    int16_t *d = malloc(sizeof(int16_t) * (size_t)tr * (size_t)jb->kp);
    float *sw = malloc(sizeof(float) * (size_t)tr * (size_t)t->ng);
    int32_t *zt = malloc(sizeof(int32_t) * (size_t)tr * (size_t)t->ng);
    if (!d || !sw || !zt) rc = -1;
    for (Py_ssize_t n = n0; n < n1 && rc == 0; n += tr) {
        int nr = n1 - n < tr ? (int)(n1 - n) : tr;
        unpack_tile(jb, n, nr, (nr + NR - 1) / NR * NR, &s, d, sw, zt);
#if WQ_X86_AVX2
        if (jb->narrow) {
            tile_narrow(jb, (const uint8_t *)d, sw, zt, n, nr);
            continue;
        }
        if (jb->avx2) {
            tile_avx2(jb, d, sw, n, nr);
            continue;
        }
#endif
        tile_portable(jb, d, sw, n, nr);
    }
    free(d);
    free(sw);
    free(zt);
    scratch_free(&s);
    return rc;
}

#if WQ_HAVE_THREADS
typedef struct {
    const job *jb;
    Py_ssize_t n0, n1;
    int rc;
} part;

static void *run_part(void *arg) {
    part *p = arg;
    p->rc = p->jb->fn(p->jb, p->n0, p->n1);
    return NULL;
}
#endif

/* Runs jb over rows [0, rows), split into contiguous row ranges over up to `threads` threads. */
static int run_rows(const job *jb, Py_ssize_t rows, int threads, double work) {
    int nt = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    while (nt > 1 && work / nt < MIN_WORK_PER_THREAD) nt--;
    if (nt > rows) nt = rows > 0 ? (int)rows : 1;
#if WQ_HAVE_THREADS
    if (nt > 1) {
        part parts[MAX_THREADS];
        pthread_t tid[MAX_THREADS];
        int started[MAX_THREADS] = {0}, rc = 0;
        for (int i = 0; i < nt; i++) {
            parts[i] = (part){jb, rows * i / nt, rows * (i + 1) / nt, 0};
            if (i > 0) started[i] = pthread_create(&tid[i], NULL, run_part, &parts[i]) == 0;
        }
        for (int i = 1; i < nt; i++)
            if (!started[i]) parts[i].rc = jb->fn(jb, parts[i].n0, parts[i].n1); /* no thread: do it here */
        parts[0].rc = jb->fn(jb, parts[0].n0, parts[0].n1);
        for (int i = 0; i < nt; i++) {
            if (i > 0 && started[i]) pthread_join(tid[i], NULL);
            rc |= parts[i].rc;
        }
        return rc;
    }
#endif
    return jb->fn(jb, 0, rows);
}

/* ---- argument handling ---- */

static int get_buf(PyObject *o, Py_buffer *b, int writable, Py_ssize_t need, const char *what) {
    if (o == Py_None) {
        b->obj = NULL;
        b->buf = NULL;
        b->len = 0;
        if (need) {
            PyErr_Format(PyExc_ValueError, "%s is required", what);
            return -1;
        }
        return 0;
    }
    if (PyObject_GetBuffer(o, b, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (b->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd needed", what, b->len, need);
        PyBuffer_Release(b);
        b->obj = NULL;
        return -1;
    }
    return 0;
}

static void release(Py_buffer *b) {
    if (b->obj) PyBuffer_Release(b);
}

enum { B_CODES, B_SCALES, B_ZEROS, B_OFFSET, B_OCOLS, B_OUTLIERS, N_TBUF };

/* Parses the tensor tuple (codes, scales, zeros|None, offset|None, outlier_columns|None, outliers|None, rows,
 * bits, cols, group_size) into t, holding its buffers in bufs (released by release_tensor). */
static int get_tensor(PyObject *tup, tensor *t, Py_buffer *bufs) {
    PyObject *o[N_TBUF];
    Py_ssize_t rows;
    int bits, cols, group;
    for (int i = 0; i < N_TBUF; i++) bufs[i].obj = NULL;
    if (!PyArg_ParseTuple(tup, "OOOOOOniii", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &rows, &bits, &cols, &group))
        return -1;
    if (bits < 2 || bits > 8 || cols < 1 || group < 1 || group > cols || rows < 0 || cols > (1 << 28)) {
        PyErr_SetString(PyExc_ValueError, "tensor: bits must be 2..8, 1 <= group_size <= cols, rows >= 0");
        return -1;
    }
    memset(t, 0, sizeof *t);
    t->rows = rows;
    t->bits = bits;
    t->cols = cols;
    t->group = group;
    t->ng = (cols + group - 1) / group;
    t->row_bytes = (Py_ssize_t)padded(cols) / CODES_PER_RUN * bits;
    t->zrow_bytes = (Py_ssize_t)padded(t->ng) / CODES_PER_RUN * bits;
    int decomposed = o[B_OFFSET] != Py_None;
    if (get_buf(o[B_CODES], &bufs[B_CODES], 0, rows * t->row_bytes, "codes") < 0 ||
        get_buf(o[B_SCALES], &bufs[B_SCALES], 0, rows * t->ng * 2, "scales") < 0 ||
        get_buf(o[B_ZEROS], &bufs[B_ZEROS], 0, 0, "zeros") < 0 ||
        get_buf(o[B_OFFSET], &bufs[B_OFFSET], 0, decomposed ? (Py_ssize_t)cols * 4 : 0, "offset") < 0 ||
        get_buf(o[B_OCOLS], &bufs[B_OCOLS], 0, 0, "outlier_columns") < 0)
        return -1;
    t->k = (int)(bufs[B_OCOLS].len / 8);
    if (get_buf(o[B_OUTLIERS], &bufs[B_OUTLIERS], 0, decomposed ? rows * t->k * 2 : 0, "outliers") < 0) return -1;
    if (bufs[B_ZEROS].obj && bufs[B_ZEROS].len < rows * t->zrow_bytes) {
        PyErr_SetString(PyExc_ValueError, "zeros: too few bytes");
        return -1;
    }
    t->codes = bufs[B_CODES].buf;
    t->scales = bufs[B_SCALES].buf;
    t->zeros = bufs[B_ZEROS].buf;
    if (decomposed) {
        t->offset = bufs[B_OFFSET].buf;
        t->ocols = bufs[B_OCOLS].buf;
        t->outliers = bufs[B_OUTLIERS].buf;
        for (int i = 0; i < t->k; i++)
            if (t->ocols[i] < 0 || t->ocols[i] >= cols) {
                PyErr_SetString(PyExc_ValueError, "outlier column out of range");
                return -1;
            }
    } else {
        t->k = 0;
    }
    return 0;
}

static void release_tensor(Py_buffer *bufs) {
    for (int i = 0; i < N_TBUF; i++) release(&bufs[i]);
}

static PyObject *finish(int rc) {
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(dequantize_doc, "dequantize(out, tensor): out (rows x cols float32) = the tensor's dequantized rows.");

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    PyObject *out_o, *tup;
    Py_buffer bufs[N_TBUF], out = {0};
    job jb = {0};
    int rc;
    if (!PyArg_ParseTuple(args, "OO!", &out_o, &PyTuple_Type, &tup)) return NULL;
    if (get_tensor(tup, &jb.t, bufs) < 0) goto fail;
    if (get_buf(out_o, &out, 1, jb.t.rows * jb.t.cols * 4, "out") < 0) goto fail;
    jb.fn = dequantize_rows;
    jb.out = out.buf;
    Py_BEGIN_ALLOW_THREADS
    rc = run_rows(&jb, jb.t.rows, 1, 0);
    Py_END_ALLOW_THREADS
    release(&out);
    release_tensor(bufs);
    return finish(rc);
fail:
    release(&out);
    release_tensor(bufs);
    return NULL;
}

PyDoc_STRVAR(matmul_doc, "matmul(out, x, m, tensor, threads): out (m x rows float32) = x (m x cols float32) @ W^T.");

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    PyObject *out_o, *x_o, *tup;
    Py_buffer bufs[N_TBUF], out = {0}, x = {0};
    job jb = {0};
    int threads, rc;
    if (!PyArg_ParseTuple(args, "OOnO!i", &out_o, &x_o, &jb.m, &PyTuple_Type, &tup, &threads)) return NULL;
    if (get_tensor(tup, &jb.t, bufs) < 0) goto fail;
    if (jb.m < 0 || get_buf(x_o, &x, 0, jb.m * jb.t.cols * 4, "x") < 0 ||
        get_buf(out_o, &out, 1, jb.m * jb.t.rows * 4, "out") < 0)
        goto fail;
    jb.fn = matmul_rows;
    jb.out = out.buf;
    jb.x = x.buf;
    double work = (double)jb.t.rows * jb.t.cols * (jb.m + 1);
    Py_BEGIN_ALLOW_THREADS
    rc = run_rows(&jb, jb.t.rows, threads, work);
    Py_END_ALLOW_THREADS
    release(&out);
    release(&x);
    release_tensor(bufs);
    return finish(rc);
fail:
    release(&out);
    release(&x);
    release_tensor(bufs);
    return NULL;
}

/* x (m x cols) -> int8 codes and one float32 scale per block: amax / 127, codes rint(x * (127 / amax)). */
ROW_LOOP static void quantize_rows(int8_t *q, float *s, const float *xv, Py_ssize_t m, int cols, int block) {
    int nb = (cols + block - 1) / block;
    for (Py_ssize_t r = 0; r < m; r++) {
        const float *v = xv + r * cols;
        for (int b = 0; b < nb; b++) {
            int k0 = b * block, k1 = k0 + block < cols ? k0 + block : cols;
            float amax = 0.0f;
            for (int k = k0; k < k1; k++) amax = fabsf(v[k]) > amax ? fabsf(v[k]) : amax;
            float inv = amax > 0.0f ? (float)ACT_LEVELS / amax : 0.0f;
            s[r * nb + b] = amax / (float)ACT_LEVELS;
            for (int k = k0; k < k1; k++) {
                float c = nearbyintf(v[k] * inv); /* round half to even, as numpy's rint */
                q[r * cols + k] = (int8_t)(c > ACT_LEVELS ? ACT_LEVELS : c < -ACT_LEVELS ? -ACT_LEVELS : c);
            }
        }
    }
}

PyDoc_STRVAR(quantize_act_doc,
             "quantize_act(qx, sx, x, m, cols, act_block): x (m x cols float32) -> int8 codes qx (m x cols) and "
             "float32 scales sx (m x ceil(cols / act_block)); x = qx * sx per block.");

static PyObject *py_quantize_act(PyObject *self, PyObject *args) {
    PyObject *qx_o, *sx_o, *x_o;
    Py_buffer qx = {0}, sx = {0}, x = {0};
    Py_ssize_t m;
    int cols, block;
    if (!PyArg_ParseTuple(args, "OOOnii", &qx_o, &sx_o, &x_o, &m, &cols, &block)) return NULL;
    if (m < 0 || cols < 1 || block < 1 || block > MAX_ACT_BLOCK) {
        PyErr_Format(PyExc_ValueError, "quantize_act: need m >= 0, cols >= 1, 1 <= act_block <= %d", MAX_ACT_BLOCK);
        return NULL;
    }
    int nb = (cols + block - 1) / block;
    if (get_buf(x_o, &x, 0, m * cols * 4, "x") < 0 || get_buf(qx_o, &qx, 1, m * cols, "qx") < 0 ||
        get_buf(sx_o, &sx, 1, m * nb * 4, "sx") < 0) {
        release(&x);
        release(&qx);
        release(&sx);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    quantize_rows(qx.buf, sx.buf, x.buf, m, cols, block);
    Py_END_ALLOW_THREADS
    release(&x);
    release(&qx);
    release(&sx);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(matmul_int8_doc,
             "matmul_int8(out, qx, sx, m, act_block, tensor, threads): out (m x rows float32) from int8 activations "
             "qx (m x cols) with block scales sx (m x nb) and the tensor's codes, integer dot products per segment.");

static PyObject *py_matmul_int8(PyObject *self, PyObject *args) {
    PyObject *out_o, *qx_o, *sx_o, *tup;
    Py_buffer bufs[N_TBUF], out = {0}, qx = {0}, sx = {0};
    job jb = {0};
    int threads, rc = 0, *seg = NULL;
    int16_t *qx16 = NULL;
    if (!PyArg_ParseTuple(args, "OOOniO!i", &out_o, &qx_o, &sx_o, &jb.m, &jb.act_block, &PyTuple_Type, &tup,
                          &threads))
        return NULL;
    if (get_tensor(tup, &jb.t, bufs) < 0) goto fail;
    if (jb.t.offset) {
        PyErr_SetString(PyExc_ValueError, "matmul_int8 takes the codes of a decomposed tensor without its offset");
        goto fail;
    }
    if (jb.act_block < 1 || jb.act_block > MAX_ACT_BLOCK) {
        PyErr_Format(PyExc_ValueError, "act_block must be 1..%d", MAX_ACT_BLOCK);
        goto fail;
    }
    jb.nb = (jb.t.cols + jb.act_block - 1) / jb.act_block;
    if (jb.m < 0 || get_buf(qx_o, &qx, 0, jb.m * jb.t.cols, "qx") < 0 ||
        get_buf(sx_o, &sx, 0, jb.m * jb.nb * 4, "sx") < 0 || get_buf(out_o, &out, 1, jb.m * jb.t.rows * 4, "out") < 0)
        goto fail;
    /* segments: the column ranges inside one weight group and one activation block */
    seg = malloc(sizeof(int) * (size_t)(jb.t.ng + jb.nb + 1));
    if (!seg) {
        PyErr_NoMemory();
        goto fail;
    }
    for (int k = 0; k < jb.t.cols;) {
        seg[jb.nseg++] = k;
        int ng = (k / jb.t.group + 1) * jb.t.group, nb = (k / jb.act_block + 1) * jb.act_block;
        k = ng < nb ? ng : nb;
    }
    seg[jb.nseg] = jb.t.cols;
    jb.fn = matmul_int8_rows;
    jb.out = out.buf;
    qx16 = malloc(sizeof(int16_t) * (size_t)(jb.m * jb.t.cols) + 1);
    if (!qx16) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < jb.m * jb.t.cols; i++) qx16[i] = ((const int8_t *)qx.buf)[i];
    jb.qx16 = qx16;
    jb.sx = sx.buf;
    jb.seg = seg;
    double work = (double)jb.t.rows * jb.t.cols * (jb.m + 1);
    Py_BEGIN_ALLOW_THREADS
    rc = run_rows(&jb, jb.t.rows, threads, work);
    Py_END_ALLOW_THREADS
    free(seg);
    free(qx16);
    release(&out);
    release(&qx);
    release(&sx);
    release_tensor(bufs);
    return finish(rc);
fail:
    free(seg);
    free(qx16);
    release(&out);
    release(&qx);
    release(&sx);
    release_tensor(bufs);
    return NULL;
}

PyDoc_STRVAR(matmul_codes_doc,
             "matmul_codes(out, qx, m, tensor, threads, portable): out (m x rows float32) from int8 activation codes "
             "qx (m x cols) and the tensor's codes: per output, the groups' exact integer sums of qx * (code - zero), "
             "each as float32 times its scale, added in group order. portable: the plain loop, not AVX2.");

static PyObject *py_matmul_codes(PyObject *self, PyObject *args) {
    PyObject *out_o, *qx_o, *tup;
    Py_buffer bufs[N_TBUF], out = {0}, qx = {0};
    job jb = {0};
    int threads, portable, rc = 0;
    piece *pieces = NULL;
    int16_t *qx16 = NULL;
    int8_t *qx8 = NULL;
    int32_t *xsum = NULL;
    if (!PyArg_ParseTuple(args, "OOnO!ip", &out_o, &qx_o, &jb.m, &PyTuple_Type, &tup, &threads, &portable))
        return NULL;
    if (get_tensor(tup, &jb.t, bufs) < 0) goto fail;
    if (jb.t.offset) {
        PyErr_SetString(PyExc_ValueError, "matmul_codes takes the codes of a decomposed tensor without its offset");
        goto fail;
    }
    if (jb.m < 0 || get_buf(qx_o, &qx, 0, jb.m * jb.t.cols, "qx") < 0 ||
        get_buf(out_o, &out, 1, jb.m * jb.t.rows * 4, "out") < 0)
        goto fail;
    int per_group = (jb.t.group + INT32_SPAN - 1) / INT32_SPAN;
    pieces = malloc(sizeof(piece) * (size_t)jb.t.ng * (size_t)per_group);
    if (!pieces) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t kp = 0;
    for (int g = 0; g < jb.t.ng; g++) {
        int k0 = g * jb.t.group, k1 = k0 + jb.t.group < jb.t.cols ? k0 + jb.t.group : jb.t.cols;
        for (int a = k0; a < k1; a += INT32_SPAN) {
            int b = a + INT32_SPAN < k1 ? a + INT32_SPAN : k1;
            pieces[jb.npieces++] = (piece){a, b - a, (int)kp, g, a == k0, b == k1};
            kp += padded_len(b - a);
        }
    }
    if (kp > (1 << 30)) {
        PyErr_SetString(PyExc_ValueError, "matmul_codes: too many columns once each group is padded to 32");
        goto fail;
    }
    jb.kp = (int)kp;
    jb.avx2 = !portable && cpu_has_avx2();
    const int8_t *q8 = qx.buf;
    int amax = 1;
    for (Py_ssize_t i = 0; i < jb.m * jb.t.cols; i++) amax = abs(q8[i]) > amax ? abs(q8[i]) : amax;
    /* int16 sums of vpmaddubsw results that stay exact; the narrow loop pays off from two on */
    int narrow = INT16_MAX_SUM / (2 * ((1 << jb.t.bits) - 1) * amax);
    jb.narrow = jb.avx2 && narrow >= 2 && jb.t.group >= NARROW_MIN_GROUP ? narrow : 0;
    if (jb.narrow) {
        qx8 = calloc((size_t)(jb.m * kp) + 1, 1); /* the padding stays zero */
        xsum = calloc((size_t)(jb.m * jb.npieces) + 1, sizeof(int32_t));
    } else {
        qx16 = calloc((size_t)(jb.m * kp) + 1, sizeof(int16_t));
    }
    if (jb.narrow ? !qx8 || !xsum : !qx16) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t m = 0; m < jb.m; m++)
        for (int i = 0; i < jb.npieces; i++) {
            const piece *p = &pieces[i];
            const int8_t *src = q8 + m * jb.t.cols + p->src;
            if (!jb.narrow) {
                for (int k = 0; k < p->len; k++) qx16[m * kp + p->dst + k] = src[k];
                continue;
            }
            int32_t sum = 0; /* |sum| <= 128 * INT32_SPAN */
            for (int k = 0; k < p->len; k++) sum += src[k];
            memcpy(qx8 + m * kp + p->dst, src, (size_t)p->len);
            xsum[m * jb.npieces + i] = sum;
        }
    jb.fn = codes_rows;
    jb.out = out.buf;
    jb.qx16 = qx16;
    jb.qx8 = qx8;
    jb.xsum = xsum;
    jb.pieces = pieces;
    double work = (double)jb.t.rows * jb.t.cols * (jb.m + 1);
    Py_BEGIN_ALLOW_THREADS
    rc = run_rows(&jb, jb.t.rows, threads, work);
    Py_END_ALLOW_THREADS
    free(pieces);
    free(qx16);
    free(qx8);
    free(xsum);
    release(&out);
    release(&qx);
    release_tensor(bufs);
    return finish(rc);
fail:
    free(pieces);
    free(qx16);
    free(qx8);
    free(xsum);
    release(&out);
    release(&qx);
    release_tensor(bufs);
    return NULL;
}

static PyMethodDef methods[] = {
    {"dequantize", py_dequantize, METH_VARARGS, dequantize_doc},
    {"matmul", py_matmul, METH_VARARGS, matmul_doc},
    {"quantize_act", py_quantize_act, METH_VARARGS, quantize_act_doc},
    {"matmul_int8", py_matmul_int8, METH_VARARGS, matmul_int8_doc},
    {"matmul_codes", py_matmul_codes, METH_VARARGS, matmul_codes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wq_kernel", "Products on packed wavq codes; see runtime/kernel.py.", -1, methods,
};

PyMODINIT_FUNC PyInit__wq_kernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "MAX_ACT_BLOCK", MAX_ACT_BLOCK) < 0 ||
              PyModule_AddIntConstant(m, "AVX2", cpu_has_avx2()) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
