/* internal — what runtime.c and registry.c share beyond the public API.
 * Not installed; nothing outside actors/ includes it. */
#ifndef DUET_ACTORS_INTERNAL_H
#define DUET_ACTORS_INTERNAL_H

#include "actors/actors.h"

/* The direct inbound address of the loop that runs `path` ("" = none: reach
 * it through its node's ROUTER), stored with its node and incarnation. */
duet_status_t duet__registry_update_direct(duet_registry_t *reg, const char *path, const char *node,
                                           uint64_t epoch, const char *direct);
bool duet__registry_find_direct(duet_registry_t *reg, const char *path,
                                char node_out[DUET_NAME_MAX], uint64_t *epoch_out,
                                char direct_out[256]);
/* Bumped by every change: a cache of lookups is valid while it holds. */
uint64_t duet__registry_gen(duet_registry_t *reg);

#endif /* DUET_ACTORS_INTERNAL_H */
