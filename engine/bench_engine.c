/* llmgate-bench-engine: measures the CPU backend on a model directory — prefill tokens/s and
 * TTFT, decode tokens/s at several batch sizes — and the machine's read bandwidth, reporting
 * decode as a fraction of the memory roofline (weights + KV bytes a step must read, divided by
 * bandwidth). Prints one Markdown table. */
#include "autoconf.h"
#include "engine/backend.h"
#include "engine/cpu/cpu.h"
#ifdef HAVE_CUDA
#include "engine/cuda/backend_cuda.h"
#endif
#include "engine/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *batches = NULL, *device = "cpu";
    int threads = 0, prompt = 128, steps = 16, portable = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--prompt") == 0 && i + 1 < argc)
            prompt = atoi(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batches") == 0 && i + 1 < argc)
            batches = argv[++i];
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            device = argv[++i];
        else if (strcmp(argv[i], "--portable") == 0)
            portable = 1;
        else if (!dir)
            dir = argv[i];
        else
            dir = NULL, i = argc;
    }
    const int cuda = strcmp(device, "cuda") == 0;
    if (!batches) batches = cuda ? "1,8,32,128" : "1,8,32";
    if (!dir || prompt < 1 || prompt > 4096 || steps < 1 || (!cuda && strcmp(device, "cpu"))) {
        fprintf(stderr, "usage: llmgate-bench-engine [--device cpu|cuda] [--threads N] "
                        "[--prompt N] [--steps N] [--batches 1,8,32] [--portable] MODEL_DIR\n");
        return 2;
    }
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    matmul_force_portable(portable);
    char err[512];
    struct model *m = NULL;
    if (model_load(dir, &m, err, sizeof err) != 0) {
        fprintf(stderr, "llmgate-bench-engine: %s\n", err);
        return 1;
    }
    const struct model_config *c = &m->cfg;
    int bmax = 1;
    for (const char *p = batches; *p;) {
        int b = atoi(p);
        if (b > bmax) bmax = b;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    const int bs = 16, ctx_blocks = (prompt + steps + bs - 1) / bs + 1;
    struct backend_params bp = {.n_threads = threads,
                                .block_size = bs,
                                .n_blocks = bmax * ctx_blocks + 1,
                                .max_batch_tokens = prompt > bmax ? prompt : bmax};
    struct backend *b = NULL;
    double bw = 0, kv_elem = 4.0, wbytes = (double)m->weight_bytes;
    char devname[256] = "";
    if (cuda) {
#ifdef HAVE_CUDA
        /* a GPU decode step reads bf16 weights and a bf16 KV cache; the roofline uses the
         * measured device-to-device copy bandwidth (read + write bytes per second) */
        if (backend_cuda_device_info(devname, sizeof devname, NULL, err, sizeof err) != 0 ||
            backend_cuda_create(m, &bp, &b, err, sizeof err) != 0) {
            fprintf(stderr, "llmgate-bench-engine: %s\n", err);
            return 1;
        }
        struct backend_cuda_stats st;
        backend_cuda_get_stats(b, &st);
        wbytes = (double)st.weight_bytes;
        if (m->w.lm_head.data != m->w.embed.data) /* the embedding is gathered, not streamed */
            wbytes -= 2.0 * c->vocab_size * c->dim;
        kv_elem = 2.0;
        bw = backend_cuda_copy_bandwidth((size_t)1 << 31, 10);
#else
        fprintf(stderr, "llmgate-bench-engine: built without CUDA (configure --with-cuda)\n");
        return 1;
#endif
    } else {
        if (backend_cpu_create(m, &bp, &b, err, sizeof err) != 0) {
            fprintf(stderr, "llmgate-bench-engine: %s\n", err);
            return 1;
        }
        struct tpool *pool = NULL;
        if (tpool_create(threads, &pool, err, sizeof err) != 0) return 1;
        bw = cpu_read_bandwidth(pool, (size_t)1 << 30, 5);
        tpool_free(pool);
    }

    const int V = c->vocab_size;
    float *logits = malloc((size_t)bmax * V * sizeof(float));
    int32_t *toks = malloc((size_t)prompt * sizeof(int32_t));
    int32_t *tables = malloc((size_t)bmax * ctx_blocks * sizeof(int32_t));
    if (!logits || !toks || !tables) return 1;
    for (int i = 0; i < prompt; i++)
        toks[i] = (int32_t)((i * 7919 + 13) % V);
    /* every sequence shares the prompt's blocks (as a prefix-cache hit would) and owns the rest */
    int shared = prompt / bs;
    for (int s = 0; s < bmax; s++)
        for (int j = 0; j < ctx_blocks; j++)
            tables[s * ctx_blocks + j] =
                j < shared ? j : shared + s * (ctx_blocks - shared) + (j - shared);

    /* prefill: one sequence of `prompt` tokens; TTFT = prefill + first token's logits */
    struct batch_seq sq = {toks, prompt, 0, tables, ctx_blocks};
    struct batch batch = {&sq, 1, 0};
    backend_forward(b, &batch, logits, err, sizeof err); /* warm caches and pages */
    double t0 = now_s();
    if (backend_forward(b, &batch, logits, err, sizeof err) != 0) {
        fprintf(stderr, "llmgate-bench-engine: %s\n", err);
        return 1;
    }
    double ttft = now_s() - t0;
    int32_t first = argmax(logits, V);

    const double kv_per_tok = 2.0 * kv_elem * c->n_layers * c->n_kv_heads * c->head_dim;
    printf("model: %s — %s, dim %d, %d layers, %d/%d heads, ffn %d, vocab %d, %s, weights "
           "streamed per step %.1f MB\n",
           dir, model_arch_name(c->arch), c->dim, c->n_layers, c->n_heads, c->n_kv_heads,
           c->hidden_dim, V, m->w.layers[0].wq.type == WT_BF16 ? "bf16" : "f32", wbytes / 1e6);
    if (cuda)
        printf("device: %s, weights bf16 on device, device copy bandwidth: %.1f GB/s\n\n", devname,
               bw);
    else
        printf("threads: %d, kernels: %s, read bandwidth: %.1f GB/s\n\n", threads,
               matmul_have_avx2() ? "avx2+fma" : "portable", bw);
    printf("| measure | value | roofline | fraction |\n|---|---|---|---|\n");
    printf("| prefill %d tokens (TTFT) | %.1f ms, %.0f tok/s | | |\n", prompt, ttft * 1e3,
           prompt / ttft);

    for (const char *p = batches; p && *p;) {
        int B = atoi(p);
        p = strchr(p, ',');
        if (p) p++;
        if (B < 1) continue;
        struct batch_seq *seqs = calloc((size_t)B, sizeof *seqs);
        int32_t *next = malloc((size_t)B * sizeof(int32_t));
        if (!seqs || !next) return 1;
        for (int s = 0; s < B; s++)
            next[s] = (first + s) % V;
        double kv_bytes = 0, t_total = 0;
        for (int step = -1; step < steps; step++) { /* step -1 warms up */
            int pos = prompt + (step < 0 ? 0 : step);
            for (int s = 0; s < B; s++)
                seqs[s] = (struct batch_seq){&next[s], 1, pos, tables + (size_t)s * ctx_blocks,
                                             ctx_blocks};
            struct batch db = {seqs, B, 0};
            double ts = now_s();
            if (backend_forward(b, &db, logits, err, sizeof err) != 0) {
                fprintf(stderr, "llmgate-bench-engine: %s\n", err);
                return 1;
            }
            double dt = now_s() - ts;
            for (int s = 0; s < B; s++)
                next[s] = argmax(logits + (size_t)s * V, V);
            if (step >= 0) {
                t_total += dt;
                kv_bytes += (double)B * (pos + 1) * kv_per_tok;
            }
        }
        double tok_s = (double)B * steps / t_total;
        /* roofline: a step must read the weights once plus every sequence's KV cache */
        double bytes_per_step = wbytes + kv_bytes / steps;
        double roof = (double)B * bw * 1e9 / bytes_per_step;
        printf("| decode batch %d (ctx %d) | %.1f tok/s, %.1f ms/step | %.1f tok/s | %.0f %% |\n",
               B, prompt, tok_s, t_total / steps * 1e3, roof, 100.0 * tok_s / roof);
        free(seqs);
        free(next);
    }
    free(logits);
    free(toks);
    free(tables);
    backend_free(b);
    model_free(m);
    return 0;
}
