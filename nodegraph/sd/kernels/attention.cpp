// Multi-head attention, softmax(q k^T * scale) v, in bf16 with fp32 accumulation, for x86 CPUs with AVX512-BF16.
//
// Why our own: on CPUs without AMX, PyTorch's CPU flash-attention kernel runs SD's 4096-token, 40-wide heads at
// about a third of the bf16 matmul peak, and attention is then a third of a UNet step. This kernel keeps a tile of
// 4 queries x 64 keys of scores in registers (online softmax, as in FlashAttention), so scores never reach memory,
// and multiplies with vdpbf16ps (two bf16 products per fp32 lane) in both products.
//
// Layout: q, k, v and out are [batch, tokens, heads * head_dim] with any token and batch stride (what the linear
// projections produce), so no transposes are needed on either side. Built by nodegraph/sd/cpu_attention.py.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kKeysPerBlock = 64;               // 4 vectors of 16 fp32 scores per query
constexpr int kGroups = kKeysPerBlock / 16;
constexpr int kPairsPerBlock = kKeysPerBlock / 2;

struct Problem {
    const uint16_t *q, *k, *v;
    uint16_t* out;
    int batch, heads, queries, keys, head_dim;
    int64_t q_token, q_batch, kv_token, kv_batch, out_token, out_batch;  // strides in elements
    float scale_log2;                                                    // scale * log2(e): softmax in base 2
};

// 2^x for x <= 0 (scores minus their running maximum): split into integer and fraction, a degree-5 polynomial for
// the fraction (relative error below 3e-6, far below the bf16 rounding the probabilities get), scalef for the rest.
inline __m512 exp2_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    const __m512 whole = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, whole);
    __m512 p = _mm512_set1_ps(1.3333558e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, whole);
}

inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// One head's keys and values, repacked once per head for the two products:
//   keys:   [block][d pair][group of 16 keys] -> 16 lanes x (k[j][2d], k[j][2d+1])
//   values: [block][key pair][dims]           -> one lane per dim x (v[2j][d], v[2j+1][d]), head_dim rounded up to 16
// Keys past the end and dims past head_dim are zero; the scores of missing keys are masked before the softmax.
struct PackedHead {
    int dim_pairs, value_width, blocks;
    std::vector<uint32_t> keys, values;

    PackedHead(int head_dim, int key_count, int value_width)
        : dim_pairs(head_dim / 2), value_width(value_width), blocks((key_count + kKeysPerBlock - 1) / kKeysPerBlock),
          keys(size_t(blocks) * dim_pairs * kGroups * 16), values(size_t(blocks) * kPairsPerBlock * value_width) {}

    void pack(const Problem& p, int b, int h) {
        std::fill(keys.begin(), keys.end(), 0u);
        std::fill(values.begin(), values.end(), 0u);
        const uint16_t* k0 = p.k + b * p.kv_batch + int64_t(h) * p.head_dim;
        const uint16_t* v0 = p.v + b * p.kv_batch + int64_t(h) * p.head_dim;
        for (int j = 0; j < p.keys; ++j) {
            const int block = j / kKeysPerBlock, within = j % kKeysPerBlock;
            const uint32_t* krow = reinterpret_cast<const uint32_t*>(k0 + j * p.kv_token);
            for (int d2 = 0; d2 < dim_pairs; ++d2)
                keys[((size_t(block) * dim_pairs + d2) * kGroups + within / 16) * 16 + within % 16] = krow[d2];
            const uint16_t* vrow = v0 + j * p.kv_token;
            uint16_t* pairs = reinterpret_cast<uint16_t*>(values.data() + (size_t(block) * kPairsPerBlock + within / 2) * value_width);
            for (int d = 0; d < p.head_dim; ++d) pairs[d * 2 + within % 2] = vrow[d];
        }
    }
};

// Queries [first, first + QT) of one head against all keys; VECTORS 16-wide output vectors per query. (For 40-wide
// heads an 8-wide third vector was tried: no faster, so a third of that product multiplies zeros.)
template <int QT, int VECTORS>
void attend(const Problem& p, const PackedHead& head, int b, int h, int first) {
    constexpr int kWidth = VECTORS * 16;
    const int dim_pairs = head.dim_pairs;
    const int rows = std::min(QT, p.queries - first);
    alignas(64) uint32_t query_pairs[QT][80];  // head_dim <= 160
    for (int i = 0; i < QT; ++i) {
        if (i < rows) std::memcpy(query_pairs[i], p.q + b * p.q_batch + int64_t(first + i) * p.q_token + int64_t(h) * p.head_dim, p.head_dim * 2);
        else std::memset(query_pairs[i], 0, p.head_dim * 2);
    }
    __m512 out[QT][VECTORS];
    __m512 sums[QT];
    float running_max[QT];  // in scaled (base-2) units
    for (int i = 0; i < QT; ++i) {
        for (int v = 0; v < VECTORS; ++v) out[i][v] = _mm512_setzero_ps();
        sums[i] = _mm512_setzero_ps();
        running_max[i] = -1e30f;
    }
    const __m512 scale = _mm512_set1_ps(p.scale_log2);
    alignas(64) uint16_t probabilities[QT][kKeysPerBlock];

    for (int block = 0; block < head.blocks; ++block) {
        __m512 s[QT][kGroups];
        for (int i = 0; i < QT; ++i)
            for (int g = 0; g < kGroups; ++g) s[i][g] = _mm512_setzero_ps();
        const __m512i* kp = reinterpret_cast<const __m512i*>(head.keys.data()) + size_t(block) * dim_pairs * kGroups;
        for (int d2 = 0; d2 < dim_pairs; ++d2) {
            const __m512i k0 = _mm512_loadu_si512(kp + d2 * kGroups + 0), k1 = _mm512_loadu_si512(kp + d2 * kGroups + 1);
            const __m512i k2 = _mm512_loadu_si512(kp + d2 * kGroups + 2), k3 = _mm512_loadu_si512(kp + d2 * kGroups + 3);
            for (int i = 0; i < QT; ++i) {
                const __m512i qq = _mm512_set1_epi32(int(query_pairs[i][d2]));
                s[i][0] = dot_pairs(s[i][0], qq, k0);
                s[i][1] = dot_pairs(s[i][1], qq, k1);
                s[i][2] = dot_pairs(s[i][2], qq, k2);
                s[i][3] = dot_pairs(s[i][3], qq, k3);
            }
        }
        const int valid = std::min(kKeysPerBlock, p.keys - block * kKeysPerBlock);
        for (int i = 0; i < QT; ++i) {
            __m512 block_max = _mm512_set1_ps(-1e30f);
            for (int g = 0; g < kGroups; ++g) {
                const int lanes = std::clamp(valid - g * 16, 0, 16);
                if (lanes < 16) s[i][g] = _mm512_mask_blend_ps(__mmask16((1u << lanes) - 1), _mm512_set1_ps(-1e30f), s[i][g]);
                block_max = _mm512_max_ps(block_max, s[i][g]);
            }
            // scale > 0, so the maximum of the scaled scores is the scaled maximum; scaling folds into exp's argument
            const float new_max = std::max(running_max[i], _mm512_reduce_max_ps(block_max) * p.scale_log2);
            const __m512 shrink = exp2_nonpositive(_mm512_set1_ps(running_max[i] - new_max));
            running_max[i] = new_max;
            const __m512 m = _mm512_set1_ps(new_max);
            __m512 total = _mm512_setzero_ps();
            for (int g = 0; g < kGroups; g += 2) {
                const __m512 a = exp2_nonpositive(_mm512_fmsub_ps(s[i][g], scale, m));
                const __m512 c = exp2_nonpositive(_mm512_fmsub_ps(s[i][g + 1], scale, m));
                total = _mm512_add_ps(total, _mm512_add_ps(a, c));
                _mm512_store_si512(probabilities[i] + g * 16, (__m512i)_mm512_cvtne2ps_pbh(c, a));
            }
            sums[i] = _mm512_fmadd_ps(sums[i], shrink, total);
            for (int v = 0; v < VECTORS; ++v) out[i][v] = _mm512_mul_ps(out[i][v], shrink);
        }
        const uint32_t* vp = head.values.data() + size_t(block) * kPairsPerBlock * kWidth;
        const int pairs = (valid + 1) / 2;
        for (int j2 = 0; j2 < pairs; ++j2) {
            __m512i vv[VECTORS];
            for (int v = 0; v < VECTORS; ++v) vv[v] = _mm512_loadu_si512(vp + j2 * kWidth + v * 16);
            for (int i = 0; i < QT; ++i) {
                const __m512i pp = _mm512_set1_epi32(int(reinterpret_cast<const uint32_t*>(probabilities[i])[j2]));
                for (int v = 0; v < VECTORS; ++v) out[i][v] = dot_pairs(out[i][v], pp, vv[v]);
            }
        }
    }
    for (int i = 0; i < rows; ++i) {
        const float inverse = 1.0f / _mm512_reduce_add_ps(sums[i]);
        uint16_t* dst = p.out + b * p.out_batch + int64_t(first + i) * p.out_token + int64_t(h) * p.head_dim;
        for (int v = 0; v < VECTORS; ++v) {
            const __m256i packed = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(out[i][v], _mm512_set1_ps(inverse)));
            const int lanes = std::min(16, p.head_dim - v * 16);
            _mm256_mask_storeu_epi16(dst + v * 16, __mmask16((1u << lanes) - 1), packed);
        }
    }
}

template <int QT, int VECTORS>
void run_range(const Problem& p, int64_t begin, int64_t end, int tiles_per_head) {
    PackedHead head(p.head_dim, p.keys, VECTORS * 16);
    int64_t packed = -1;
    for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / tiles_per_head;
        if (bh != packed) {
            head.pack(p, int(bh / p.heads), int(bh % p.heads));
            packed = bh;
        }
        attend<QT, VECTORS>(p, head, int(bh / p.heads), int(bh % p.heads), int(task % tiles_per_head) * QT);
    }
}

template <int QT, int VECTORS>
void run(const Problem& p, int threads) {
    const int tiles_per_head = (p.queries + QT - 1) / QT;
    const int64_t tasks = int64_t(p.batch) * p.heads * tiles_per_head;
    threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
    std::vector<std::thread> workers;
    for (int t = 1; t < threads; ++t)
        workers.emplace_back(run_range<QT, VECTORS>, std::cref(p), tasks * t / threads, tasks * (t + 1) / threads, tiles_per_head);
    run_range<QT, VECTORS>(p, 0, tasks / threads, tiles_per_head);
    for (auto& w : workers) w.join();
}

}  // namespace

extern "C" {

int nodegraph_attention_supported() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
}

// Returns 0 on success, 1 for a head size this kernel does not handle (even sizes up to 160 are handled).
int nodegraph_attention_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* out, int batch, int heads,
                             int queries, int keys, int head_dim, int64_t q_token, int64_t q_batch, int64_t kv_token,
                             int64_t kv_batch, int64_t out_token, int64_t out_batch, float scale, int threads) {
    if (head_dim % 2 || head_dim > 160 || head_dim <= 0 || keys <= 0) return 1;
    const Problem p{q, k, v, out, batch, heads, queries, keys, head_dim, q_token, q_batch, kv_token, kv_batch, out_token,
                    out_batch, scale * 1.4426950408889634f};
    switch ((head_dim + 15) / 16) {  // fewer queries per tile for wide heads: the accumulators stay in registers
        case 1: run<4, 1>(p, threads); break;
        case 2: run<4, 2>(p, threads); break;
        case 3: run<4, 3>(p, threads); break;
        case 4: run<4, 4>(p, threads); break;
        case 5: run<4, 5>(p, threads); break;
        case 6: run<2, 6>(p, threads); break;
        case 7: run<2, 7>(p, threads); break;
        case 8: run<2, 8>(p, threads); break;
        case 9: run<2, 9>(p, threads); break;
        default: run<2, 10>(p, threads); break;
    }
    return 0;
}

}  // extern "C"
