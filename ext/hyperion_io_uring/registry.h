/*
 * registry.h: live HotpathRing handles (registry.c). Bottom layer.
 */
#ifndef HIO_REGISTRY_H
#define HIO_REGISTRY_H 1

void hio_registry_add(const void *handle);
void hio_registry_remove(const void *handle);
int hio_registry_live(const void *handle);

#endif
