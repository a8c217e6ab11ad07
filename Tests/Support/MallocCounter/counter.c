#define _GNU_SOURCE
#include "MallocCounter.h"
#include <errno.h>
#include <pthread.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Thread_local int counting;
static _Thread_local unsigned long allocations;

/* Swift Testing installs these runtime hooks to capture a backtrace whenever any error is
 * thrown, which allocates. discod runs without them; while counting, they are set aside so
 * that an answer that throws internally (WireOverflow on the TC path) is measured as it runs
 * in production. */
extern void *_swift_willThrow;
extern void *_swift_willThrowTypedImpl;
/* The hooks are process-wide while the counts are per thread, and Swift Testing runs counting
 * tests in parallel: the first counter to start sets the hooks aside and the last to stop puts
 * them back, so that one test stopping cannot restore them under another still counting. */
static pthread_mutex_t hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static int hooks_holders;
static void *saved_will_throw;
static void *saved_will_throw_typed;

void disco_malloc_counting_start(void) {
    pthread_mutex_lock(&hooks_lock);
    if (hooks_holders++ == 0) {
        saved_will_throw = __atomic_exchange_n(&_swift_willThrow, NULL, __ATOMIC_SEQ_CST);
        saved_will_throw_typed = __atomic_exchange_n(&_swift_willThrowTypedImpl, NULL, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&hooks_lock);
    allocations = 0;
    counting = 1;
}

unsigned long disco_malloc_counting_stop(void) {
    counting = 0;
    pthread_mutex_lock(&hooks_lock);
    if (--hooks_holders == 0) {
        __atomic_store_n(&_swift_willThrow, saved_will_throw, __ATOMIC_SEQ_CST);
        __atomic_store_n(&_swift_willThrowTypedImpl, saved_will_throw_typed, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&hooks_lock);
    return allocations;
}

void *malloc(size_t size) { if (counting) allocations++; return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { if (counting) allocations++; return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { if (counting) allocations++; return __libc_realloc(p, size); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t alignment, size_t size) { if (counting) allocations++; return __libc_memalign(alignment, size); }
void *aligned_alloc(size_t alignment, size_t size) { if (counting) allocations++; return __libc_memalign(alignment, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    if (counting) allocations++;
    void *p = __libc_memalign(alignment, size);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
