/* llmgate-mkmodel: writes a random-weight model directory from a preset. */
#include "engine/mkmodel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *fp)
{
    fprintf(fp, "usage: llmgate-mkmodel [--dtype bf16|f32] [--seed N] [--std X] PRESET DIR\n"
                "       llmgate-mkmodel --list\npresets:");
    for (const char *const *n = mkmodel_preset_names(); *n; n++)
        fprintf(fp, " %s", *n);
    fprintf(fp, "\n");
}

int main(int argc, char **argv)
{
    const char *dtype = "bf16", *preset = NULL, *dir = NULL;
    unsigned long long seed = 1;
    double std = 0.02;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--list") == 0) {
            for (const char *const *n = mkmodel_preset_names(); *n; n++)
                printf("%s\n", *n);
            return 0;
        } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            dtype = argv[++i];
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--std") == 0 && i + 1 < argc) {
            std = strtod(argv[++i], NULL);
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (!preset) {
            preset = argv[i];
        } else if (!dir) {
            dir = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    struct mkmodel_spec spec;
    if (!preset || !dir || mkmodel_preset(preset, &spec) != 0 ||
        (strcmp(dtype, "bf16") != 0 && strcmp(dtype, "f32") != 0) || !(std > 0 && std < 10)) {
        usage(stderr);
        return 2;
    }
    spec.dtype = strcmp(dtype, "f32") == 0 ? WT_F32 : WT_BF16;
    spec.seed = seed;
    spec.init_std = (float)std;
    char err[512];
    if (mkmodel_write(&spec, dir, err, sizeof err) != 0) {
        fprintf(stderr, "llmgate-mkmodel: %s\n", err);
        return 1;
    }
    printf("wrote %s (%s, %s, seed %llu) to %s\n", preset, model_arch_name(spec.arch), dtype, seed,
           dir);
    return 0;
}
