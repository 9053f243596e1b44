/* libFuzzer target: a deployment file from the fuzz bytes. The loader must
 * either report problems (every issue with a message, lines within the
 * input) or give a deployment that writes back to YAML which loads again
 * to an equal deployment, and whose queries hold together. The expert count
 * is given, so the model directory named in the input is never read. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "topology/topology.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const duet_topo_validate_opts_t opts = {.n_experts = 8};
    duet_topology_t *t = NULL;
    duet_topo_report_t report = {0};
    duet_status_t st =
        duet_topology_parse((const char *)data, size, "fuzz.yaml", NULL, &opts, &t, &report);
    if (st) {
        if (t || (st == DUET_ERR_INVALID && report.n_issues == 0))
            abort();
        /* an upper bound on YAML line breaks: \n, \r and the last byte of
         * NEL (C2 85), LS (E2 80 A8) and PS (E2 80 A9) */
        size_t lines = 1;
        for (size_t i = 0; i < size; i++)
            lines += data[i] == '\n' || data[i] == '\r' || data[i] == 0x85 || data[i] == 0xa8 ||
                     data[i] == 0xa9;
        for (size_t i = 0; i < report.n_issues; i++)
            if (!report.issues[i].message || report.issues[i].line < 0 ||
                (size_t)report.issues[i].line > lines + 1)
                abort();
        duet_buf_t b = {0};
        (void)duet_topo_report_format(&report, &b);
        duet_buf_cleanup(&b);
        duet_topo_report_cleanup(&report);
        return 0;
    }
    /* a valid deployment round-trips */
    duet_buf_t text = {0};
    if (duet_topology_write(t, &text) != DUET_OK)
        abort();
    duet_topology_t *u = NULL;
    if (duet_topology_parse((const char *)text.data, text.len, "written.yaml", NULL, &opts, &u,
                            NULL) != DUET_OK ||
        !duet_topology_equal(t, u))
        abort();
    for (int e = 0; e < 8; e++)
        if (duet_topology_expert_shards(t, e, NULL, 0) < 1)
            abort();
    for (size_t i = 0; i < duet_topology_node_count(t); i++)
        (void)duet_topology_node_actors(t, duet_topology_node(t, i)->name, NULL, 0);
    duet_topology_destroy(&u);
    duet_topology_destroy(&t);
    duet_buf_cleanup(&text);
    duet_topo_report_cleanup(&report);
    return 0;
}
