/* Two models from one library, one after the other from one shared arena (tests/test_library.py).
 * usage: two_models KWS_IN KWS_OUT AD_IN AD_OUT. Runs kws, ad, then kws again; the second kws
 * result must equal the first byte for byte (the arena holds nothing between runs). */
#include <stdio.h>
#include <string.h>
#include "models.h"

static unsigned char arena[MODELS_SHARED_ARENA_SIZE] __attribute__((aligned(MODELS_SHARED_ARENA_ALIGN)));
static unsigned char kws_in[KWS_INPUT0_BYTES], kws_out[KWS_OUTPUT0_BYTES], kws_again[KWS_OUTPUT0_BYTES];
static unsigned char ad_in[AD_INPUT0_BYTES], ad_out[AD_OUTPUT0_BYTES];

static int io(const char *path, void *buf, size_t n, int write) {
    FILE *f = fopen(path, write ? "wb" : "rb");
    if (!f) return 1;
    size_t done = write ? fwrite(buf, 1, n, f) : fread(buf, 1, n, f);
    fclose(f);
    return done != n;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    if (io(argv[1], kws_in, sizeof kws_in, 0) || io(argv[3], ad_in, sizeof ad_in, 0)) return 3;
    const void *ki[] = {kws_in}, *ai[] = {ad_in};
    void *ko[] = {kws_out}, *ao[] = {ad_out}, *ko2[] = {kws_again};
    if (kws_run(ki, ko, arena) || ad_run(ai, ao, arena) || kws_run(ki, ko2, arena)) return 4;
    if (memcmp(kws_out, kws_again, sizeof kws_out)) return 5;
    return io(argv[2], kws_out, sizeof kws_out, 1) || io(argv[4], ad_out, sizeof ad_out, 1) ? 6 : 0;
}
