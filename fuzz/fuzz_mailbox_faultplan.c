/* libFuzzer target: the fault-plan parser (text files people write). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailbox/mailbox.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    duet_fault_plan_t *p;
    if (duet_fault_plan_create(1, &p) == DUET_OK) {
        if (duet_fault_plan_parse(p, text, "fuzz") == DUET_OK) {
            duet_fault_verdict_t v;
            duet_fault_decide(p, 1000000, "a", "x/1", "b", "y/2", "t", &v);
            (void)duet_fault_partitioned(p, 1000000, "a", "b");
        }
        duet_fault_plan_destroy(&p);
    }
    free(text);
    return 0;
}
