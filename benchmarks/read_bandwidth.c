/* Read-only memory bandwidth: the floor under a decode step, which reads every weight once.
 *
 *     cc -O3 -march=native -pthread read_bandwidth.c -o read_bandwidth && ./read_bandwidth [threads] [MiB]
 *
 * Each thread sums its own contiguous slice of a buffer far larger than the caches (the compiler
 * vectorizes the sum); the threads start together at a barrier and the pass ends when the last one
 * is done. Prints the best of 30 passes in bytes per second. benchmarks/decode_profile.py builds
 * and runs it (numpy's copy or GEMV probes reach 75-85% of it on this VM).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t *buffer;
static size_t words;
static int threads;
static pthread_barrier_t start_line, finish_line;
static volatile uint64_t sinks[256];  /* one per thread: the sums must not be optimized away */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *reader(void *arg) {
    const size_t id = (size_t)arg, lo = words * id / threads, hi = words * (id + 1) / threads;
    for (;;) {
        pthread_barrier_wait(&start_line);
        uint64_t sum = 0;  /* -O3 vectorizes this into independent vector adds */
        for (size_t i = lo; i < hi; i++) sum += buffer[i];
        sinks[id] += sum;
        pthread_barrier_wait(&finish_line);
    }
    return NULL;
}

int main(int argc, char **argv) {
    threads = argc > 1 ? atoi(argv[1]) : 2;
    const size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 256;
    if (threads < 1 || threads > 256 || mib < 16) {
        fprintf(stderr, "usage: read_bandwidth [threads 1-256] [MiB >= 16]\n");
        return 2;
    }
    words = mib * 1024 * 1024 / sizeof(uint64_t);
    buffer = aligned_alloc(64, words * sizeof(uint64_t));
    if (!buffer) return 1;
    memset(buffer, 1, words * sizeof(uint64_t));  /* fault every page in before timing */
    pthread_barrier_init(&start_line, NULL, threads + 1);
    pthread_barrier_init(&finish_line, NULL, threads + 1);
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, reader, (void *)(size_t)i);
        pthread_detach(t);
    }
    double best = 1e30;
    for (int pass = 0; pass < 30; pass++) {
        const double t0 = now();
        pthread_barrier_wait(&start_line);
        pthread_barrier_wait(&finish_line);
        const double took = now() - t0;
        if (pass > 0 && took < best) best = took;  /* the first pass warms the threads */
    }
    printf("%.6e\n", words * sizeof(uint64_t) / best);
    return 0;
}
