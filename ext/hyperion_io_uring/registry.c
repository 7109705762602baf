/*
 * registry.c: the live HotpathRing engines of this process, so that the C
 * entry point (c_api.c) can tell a live handle from a stale or bogus one
 * without dereferencing it.
 *
 * Layer: bottom. Calls libc only; knows the handles as addresses.
 */
#include "registry.h"
#include <stdlib.h>

static const void **registry_live;
static size_t registry_n, registry_cap;

void
hio_registry_add(const void *handle)
{
    if (registry_n == registry_cap) {
        size_t cap = registry_cap ? registry_cap * 2 : 8;
        const void **n = realloc(registry_live, cap * sizeof(*n));
        if (!n) return; /* unregistered: the entry point then refuses it */
        registry_live = n;
        registry_cap = cap;
    }
    registry_live[registry_n++] = handle;
}

void
hio_registry_remove(const void *handle)
{
    size_t i;

    for (i = 0; i < registry_n; i++) {
        if (registry_live[i] == handle) {
            registry_live[i] = registry_live[--registry_n];
            return;
        }
    }
}

int
hio_registry_live(const void *handle)
{
    size_t i;

    for (i = 0; i < registry_n; i++)
        if (registry_live[i] == handle) return 1;
    return 0;
}
