#define _GNU_SOURCE
#include "MallocCounter.h"
#include <errno.h>
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
static _Thread_local void *saved_will_throw;
static _Thread_local void *saved_will_throw_typed;

void disco_malloc_counting_start(void) {
    saved_will_throw = __atomic_exchange_n(&_swift_willThrow, NULL, __ATOMIC_SEQ_CST);
    saved_will_throw_typed = __atomic_exchange_n(&_swift_willThrowTypedImpl, NULL, __ATOMIC_SEQ_CST);
    allocations = 0;
    counting = 1;
}

unsigned long disco_malloc_counting_stop(void) {
    counting = 0;
    __atomic_store_n(&_swift_willThrow, saved_will_throw, __ATOMIC_SEQ_CST);
    __atomic_store_n(&_swift_willThrowTypedImpl, saved_will_throw_typed, __ATOMIC_SEQ_CST);
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
