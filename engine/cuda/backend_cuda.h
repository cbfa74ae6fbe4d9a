/* Internals of the CUDA backend that tests and the benchmark reach: switches and counters. The
 * backend itself is created through backend_cuda_create (engine/backend.h). */
#ifndef LLMGATE_ENGINE_CUDA_BACKEND_CUDA_H
#define LLMGATE_ENGINE_CUDA_BACKEND_CUDA_H

#include "engine/backend.h"

#include <stddef.h>

/* Decode-step CUDA graphs on (1, the default unless LLMGATE_CUDA_GRAPHS=0) or off (0). Returns
 * -1 when b is not a CUDA backend. */
int backend_cuda_set_graphs(struct backend *b, int on);

struct backend_cuda_stats {
    long graph_captures; /* decode graphs captured (one per batch-size bucket used) */
    long graph_replays;  /* decode steps run by replaying a graph */
    long eager_steps;    /* steps run kernel by kernel */
    long gemv_calls;     /* projections through the hand-written GEMV (1-8 tokens) */
    long cublaslt_calls; /* projections through cuBLASLt */
    size_t device_bytes; /* device memory the backend holds */
    size_t weight_bytes; /* of which bf16 weights */
    size_t kv_bytes;     /* of which the KV pool */
};

/* Counters of b since creation; -1 when b is not a CUDA backend. */
int backend_cuda_get_stats(struct backend *b, struct backend_cuda_stats *out);

/* Device name, compute capability, multiprocessors and memory of device 0, for logs and the
 * benchmark. 0, or -1 with err (no device, no driver). */
int backend_cuda_device_info(char *buf, size_t len, int *n_sm, char *err, size_t errlen);

/* Best device-to-device copy bandwidth over `bytes` (read + written bytes per second), GB/s;
 * 0 on failure. The HBM roofline of the benchmark. */
double backend_cuda_copy_bandwidth(size_t bytes, int reps);

#endif
