/* On-device fine-tuning: the worked example of a --train build.
 *
 * The keyword spotter's last layer (fc.weight, fc.bias) is trained on a few labelled
 * recordings stored with the program (a small variant of the bundled model: its input
 * layer and its classifier; toolchain/finetune.py says why), by SGD on the softmax cross entropy, one recording
 * a step; every other weight stays a read-only constant in flash. The program prints the
 * loss of every step and how many recordings the model gets right before and after:
 *
 *   step 0 loss 2.511...
 *   ...
 *   correct before 0/8 after 8/8
 *
 * Build the library it links (`invoke finetune` does all of this, and checks the loss
 * trajectory against a float64 numpy simulation of the same steps):
 *
 *   edgec build --target cortex-a76 --model kws_small.onnx --train --loss cross-entropy \
 *               --trainable 'fc.*'
 *
 * then compile this file with -I build/cortex-a76 and the generated finetune_data.h
 * (FT_SAMPLES recordings ft_inputs, their int64 labels ft_labels, FT_EPOCHS, FT_LR) and
 * link libmodel.a. Hosted (-DFT_HOSTED) it prints with stdio; otherwise with the
 * bare-metal firmware's platform.h (fw_puts, fw_putu, fw_putf). No heap either way:
 * the parameters and the arena are static arrays of the sizes model.h states.
 */
#include <stdint.h>
#include "model.h"
#include "finetune_data.h"

#ifdef FT_HOSTED
#include <stdio.h>
static void say(const char *s) { fputs(s, stdout); }
static void say_u(unsigned long v) { printf("%lu", v); }
static void say_f(float v) { printf("%.9g", (double)v); }
#else
#include "platform.h"
static void say(const char *s) { fw_puts(s); }
static void say_u(unsigned long v) { fw_putu(v); }
static void say_f(float v) { fw_putf(v); }
#endif

/* the trained parameters: a caller-owned buffer (read-write memory) */
static unsigned char params[MODEL_PARAMS_SIZE] __attribute__((aligned(MODEL_PARAMS_ALIGN)));
static unsigned char arena[MODEL_TRAIN_ARENA_SIZE] __attribute__((aligned(MODEL_ARENA_ALIGN)));
static float scores[MODEL_OUTPUT0_ELEMS];

/* recordings whose highest score is their label, with the current parameters */
static int correct(void) {
    int right = 0;
    for (int i = 0; i < FT_SAMPLES; i++) {
        const void *in[] = {ft_inputs[i]};
        void *out[] = {scores};
        if (model_run_params(params, in, out, arena) != 0) return -1;
        unsigned best = 0;
        for (unsigned c = 1; c < MODEL_OUTPUT0_ELEMS; c++)
            if (scores[c] > scores[best]) best = c;
        right += best == ft_labels[i];
    }
    return right;
}

int main(void) {
    model_params_init(params);  /* the trained values shipped in the library */
    int before = correct();
    unsigned long step = 0;
    for (int e = 0; e < FT_EPOCHS; e++) {
        for (int i = 0; i < FT_SAMPLES; i++) {
            const void *in[] = {ft_inputs[i]};
            const void *target[] = {&ft_labels[i]};
            float loss;
            /* SGD needs no optimizer state: opt_state may be NULL */
            if (model_train_step(params, 0, in, target, FT_LR, &loss, arena) != 0) {
                say("FAIL train_step returned an error\n");
                return 2;
            }
            say("step ");
            say_u(step++);
            say(" loss ");
            say_f(loss);
            say("\n");
        }
    }
    int after = correct();
    if (before < 0 || after < 0) {
        say("FAIL run_params returned an error\n");
        return 2;
    }
    say("correct before ");
    say_u((unsigned long)before);
    say("/");
    say_u(FT_SAMPLES);
    say(" after ");
    say_u((unsigned long)after);
    say("/");
    say_u(FT_SAMPLES);
    say("\n");
    return 0;
}
