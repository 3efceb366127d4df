/* onnxruntime peer driver: loads an ONNX model with onnxruntime's C API, single-threaded,
 * feeds fixed inputs and runs the model RUNS times; the outputs of the last run are written
 * out. Built for aarch64 and run under qemu-aarch64 with the instruction-count plugin by
 * benchmarks/peer_aarch64.py ((count(N runs) - count(1 run)) / (N - 1) = one inference).
 *
 *   ort_driver MODEL RUNS IN.bin OUT.bin
 *
 * IN.bin: the session's inputs in session order, raw little-endian, concatenated (each of
 * the size its static declared shape and element type give). OUT.bin: the outputs of the
 * last run, in session order, raw, concatenated. Prints "output i: dims" lines to stdout.
 *
 * Needs onnxruntime_c_api.h (any ORT_API_VERSION up to the library's: the OrtApi table is
 * append-only) and libonnxruntime.so; see benchmarks/peer_aarch64.py.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

static const OrtApi *ort;

static void check(OrtStatus *st, const char *what) {
    if (st) {
        fprintf(stderr, "ort_driver: %s: %s\n", what, ort->GetErrorMessage(st));
        ort->ReleaseStatus(st);
        exit(2);
    }
}

static size_t elem_size(ONNXTensorElementDataType t) {
    switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return 8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return 1;
    default: return 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL RUNS IN.bin OUT.bin\n", argv[0]);
        return 1;
    }
    const char *model = argv[1], *in_path = argv[3], *out_path = argv[4];
    long runs = strtol(argv[2], NULL, 10);
    if (runs < 1) {
        fprintf(stderr, "ort_driver: RUNS must be >= 1\n");
        return 1;
    }
    ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (!ort) {
        fprintf(stderr, "ort_driver: the library (%s) lacks API version %d\n",
                OrtGetApiBase()->GetVersionString(), ORT_API_VERSION);
        return 1;
    }

    OrtEnv *env;
    check(ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "peer", &env), "CreateEnv");
    check(ort->DisableTelemetryEvents(env), "DisableTelemetryEvents");
    OrtSessionOptions *opts;
    check(ort->CreateSessionOptions(&opts), "CreateSessionOptions");
    check(ort->SetIntraOpNumThreads(opts, 1), "SetIntraOpNumThreads");
    check(ort->SetInterOpNumThreads(opts, 1), "SetInterOpNumThreads");
    check(ort->SetSessionExecutionMode(opts, ORT_SEQUENTIAL), "SetSessionExecutionMode");
    check(ort->SetSessionGraphOptimizationLevel(opts, ORT_ENABLE_ALL), "SetSessionGraphOptimizationLevel");
    /* No spinning worker threads: with one intra-op thread there are none to spin, but say so. */
    check(ort->AddSessionConfigEntry(opts, "session.intra_op.allow_spinning", "0"), "AddSessionConfigEntry");
    OrtSession *session;
    check(ort->CreateSession(env, model, opts, &session), "CreateSession");

    OrtAllocator *alloc;
    check(ort->GetAllocatorWithDefaultOptions(&alloc), "GetAllocatorWithDefaultOptions");
    OrtMemoryInfo *mem;
    check(ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");

    size_t n_in, n_out;
    check(ort->SessionGetInputCount(session, &n_in), "SessionGetInputCount");
    check(ort->SessionGetOutputCount(session, &n_out), "SessionGetOutputCount");
    char **in_names = calloc(n_in, sizeof *in_names), **out_names = calloc(n_out, sizeof *out_names);
    OrtValue **inputs = calloc(n_in, sizeof *inputs);
    void **in_data = calloc(n_in, sizeof *in_data);

    FILE *fin = fopen(in_path, "rb");
    if (!fin) {
        perror(in_path);
        return 1;
    }
    for (size_t i = 0; i < n_in; i++) {
        check(ort->SessionGetInputName(session, i, alloc, &in_names[i]), "SessionGetInputName");
        OrtTypeInfo *ti;
        check(ort->SessionGetInputTypeInfo(session, i, &ti), "SessionGetInputTypeInfo");
        const OrtTensorTypeAndShapeInfo *tsi;
        check(ort->CastTypeInfoToTensorInfo(ti, &tsi), "CastTypeInfoToTensorInfo");
        ONNXTensorElementDataType type;
        check(ort->GetTensorElementType(tsi, &type), "GetTensorElementType");
        size_t rank;
        check(ort->GetDimensionsCount(tsi, &rank), "GetDimensionsCount");
        int64_t dims[16];
        if (rank > 16) {
            fprintf(stderr, "ort_driver: input %s has rank %zu > 16\n", in_names[i], rank);
            return 1;
        }
        check(ort->GetDimensions(tsi, dims, rank), "GetDimensions");
        size_t count = 1, esize = elem_size(type);
        for (size_t d = 0; d < rank; d++) {
            if (dims[d] < 0) {
                fprintf(stderr, "ort_driver: input %s has a dynamic dimension %zu\n", in_names[i], d);
                return 1;
            }
            count *= (size_t)dims[d];
        }
        if (!esize) {
            fprintf(stderr, "ort_driver: input %s has unsupported element type %d\n", in_names[i], (int)type);
            return 1;
        }
        size_t bytes = count * esize;
        in_data[i] = malloc(bytes ? bytes : 1);
        if (fread(in_data[i], 1, bytes, fin) != bytes) {
            fprintf(stderr, "ort_driver: %s is too short for input %s (%zu bytes)\n", in_path, in_names[i], bytes);
            return 1;
        }
        check(ort->CreateTensorWithDataAsOrtValue(mem, in_data[i], bytes, dims, rank, type, &inputs[i]),
              "CreateTensorWithDataAsOrtValue");
        ort->ReleaseTypeInfo(ti);
    }
    if (fgetc(fin) != EOF) {
        fprintf(stderr, "ort_driver: %s is longer than the inputs\n", in_path);
        return 1;
    }
    fclose(fin);
    for (size_t i = 0; i < n_out; i++)
        check(ort->SessionGetOutputName(session, i, alloc, &out_names[i]), "SessionGetOutputName");

    OrtValue **outputs = calloc(n_out, sizeof *outputs);
    for (long r = 0; r < runs; r++) {
        for (size_t i = 0; i < n_out; i++) {
            ort->ReleaseValue(outputs[i]);
            outputs[i] = NULL;
        }
        check(ort->Run(session, NULL, (const char *const *)in_names, (const OrtValue *const *)inputs, n_in,
                       (const char *const *)out_names, n_out, outputs),
              "Run");
    }

    FILE *fout = fopen(out_path, "wb");
    if (!fout) {
        perror(out_path);
        return 1;
    }
    for (size_t i = 0; i < n_out; i++) {
        OrtTensorTypeAndShapeInfo *tsi;
        check(ort->GetTensorTypeAndShape(outputs[i], &tsi), "GetTensorTypeAndShape");
        ONNXTensorElementDataType type;
        size_t count, rank;
        int64_t dims[16];
        check(ort->GetTensorElementType(tsi, &type), "GetTensorElementType");
        check(ort->GetTensorShapeElementCount(tsi, &count), "GetTensorShapeElementCount");
        check(ort->GetDimensionsCount(tsi, &rank), "GetDimensionsCount");
        check(ort->GetDimensions(tsi, dims, rank < 16 ? rank : 16), "GetDimensions");
        void *data;
        check(ort->GetTensorMutableData(outputs[i], &data), "GetTensorMutableData");
        fwrite(data, elem_size(type), count, fout);
        printf("output %zu: %s type %d dims", i, out_names[i], (int)type);
        for (size_t d = 0; d < rank && d < 16; d++) printf(" %lld", (long long)dims[d]);
        printf("\n");
        ort->ReleaseTensorTypeAndShapeInfo(tsi);
        ort->ReleaseValue(outputs[i]);
    }
    fclose(fout);

    for (size_t i = 0; i < n_in; i++) {
        ort->ReleaseValue(inputs[i]);
        free(in_data[i]);
        alloc->Free(alloc, in_names[i]);
    }
    for (size_t i = 0; i < n_out; i++) alloc->Free(alloc, out_names[i]);
    ort->ReleaseMemoryInfo(mem);
    ort->ReleaseSession(session);
    ort->ReleaseSessionOptions(opts);
    ort->ReleaseEnv(env);
    return 0;
}
