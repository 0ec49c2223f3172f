// engine._frame_resize: Pillow's `convert("L")` + `resize(size, BICUBIC)` of one uint8 host frame, bit for bit.
//
// Pillow (13.x) resizes an 8-bit image in two separable passes with 22-bit fixed-point coefficients: every output
// pixel is clamp((2^21 + sum_k c_k * p_k) >> 22, 0, 255) in int32, and the intermediate image between the passes is
// uint8. This file does exactly that arithmetic, only faster than Pillow's scalar loops; the coefficient tables
// (one window and one row of int32 weights per output index) are computed in Python by engine.preprocess from the
// same formula Pillow uses, so the C code holds no filter math at all. The caller also says which pass goes first
// (htkernels.pillow.vertical_pass_first: Pillow 13 resamples tall frames vertically first), since the uint8 rounding
// between the passes makes the order visible.
//
// Why it is faster:
// - the vertical pass combines whole rows: an int32 accumulator row and one multiply-add per tap, contiguous in x;
// - the horizontal pass works on blocks of kBlockRows rows, transposed (SSE2 16x16 byte tiles) and widened into a
//   [width][kBlockRows] int32 scratch buffer, so each tap of each output column is again one contiguous kBlockRows-lane
//   multiply-add (no horizontal sums); the block's results are transposed back the same way. RGB frames are
//   converted to luma row by row just before the transpose, in the same block;
// - with the horizontal pass first (the usual case) only the rows the vertical pass reads are resampled, as Pillow
//   does.
// The hot loops are compiled several times (target_clones: x86-64-v4 = AVX-512F/BW/DQ/VL, AVX2, the baseline) and
// the loader picks the best one for the CPU it runs on, so one portable binary vectorizes wide without -march=native.
//
// The Python call releases the GIL for the arithmetic: stream threads resize frames in parallel. Single-threaded
// inside. Argument checks (shapes, window bounds, coefficient magnitudes) run before, so no input can read outside
// a buffer or overflow the int32 accumulator.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// Build switches for the tests, which compile each code path on one machine: FRAME_RESIZE_NO_CLONES compiles the hot
// loops once, for the compiler's flags (-mavx2, ...); FRAME_RESIZE_PORTABLE also leaves out the SSE2 transposes, as a
// build for another architecture does.
#if defined(__SSE2__) && !defined(FRAME_RESIZE_PORTABLE)
#define USE_SSE2 1
#include <emmintrin.h>
#else
#define USE_SSE2 0
#endif

// target_clones needs ifunc support from the toolchain and the C library (GNU/Linux on x86-64); elsewhere the
// loops are compiled once for the build's baseline.
#if USE_SSE2 && !defined(FRAME_RESIZE_NO_CLONES) && defined(__x86_64__) && defined(__GLIBC__) && \
    defined(__has_attribute)
#if __has_attribute(target_clones)
#define HOT_LOOP __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
#endif
#ifndef HOT_LOOP
#define HOT_LOOP
#endif

// GCC fully unrolls a 16-iteration loop before vectorizing; kept a loop, it becomes one 16-lane vector operation.
#if defined(__GNUC__) && !defined(__clang__)
#define KEEP_LOOP _Pragma("GCC unroll 1")
#else
#define KEEP_LOOP
#endif

enum {
  kPrecisionBits = 22,  // Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
  kBlockRows = 16,      // rows per horizontal block: 16 int32 lanes, one AVX-512 register
};

// Sum_k |c_k| <= 2^23 keeps |2^21 + sum_k c_k * p_k| < 2^31 for any uint8 pixels (Pillow's weights: about 1.2 * 2^22).
static const int64_t kMaxAbsWeightSum = (int64_t)1 << 23;

// One resize pass along one axis: output i = sum over k < count[i] of coeffs[i][k] * input[first[i] + k].
typedef struct {
  Py_ssize_t out_size;
  Py_ssize_t taps;        // row length of coeffs (the widest window)
  const int32_t* first;   // [out_size]
  const int32_t* count;   // [out_size]
  const int32_t* coeffs;  // [out_size, taps] fixed point, 22 fractional bits
  Py_ssize_t lowest;      // first input index any window reads
  Py_ssize_t end;         // one past the last input index any window reads
} ResamplePass;

// Pillow's clip8: the accumulator's integer part, clamped. (>> of a negative int is an arithmetic shift with the
// compilers this builds with, as in Pillow itself.)
static inline uint8_t clip8(int32_t acc) {
  const int32_t value = acc >> kPrecisionBits;
  return (uint8_t)(value < 0 ? 0 : (value > 255 ? 255 : value));
}

// Pillow's L24 luma (ITU-R 601-2, 16-bit fixed point) of `width` pixels. Inlined into each hot loop's clones.
static inline void luma_row(const uint8_t* restrict rgb,  // [width, 3]
                            uint8_t* restrict gray,       // [width]
                            Py_ssize_t width) {
  for (Py_ssize_t x = 0; x < width; ++x) {
    const uint32_t r = rgb[3 * x], g = rgb[3 * x + 1], b = rgb[3 * x + 2];
    gray[x] = (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
  }
}

// The luma of rows [first_row, end_row) of an RGB frame, packed.
HOT_LOOP static void luma_rows(const uint8_t* rgb,  // [height, width, 3]
                               uint8_t* gray,       // [end_row - first_row, width]
                               Py_ssize_t width, Py_ssize_t first_row, Py_ssize_t end_row) {
  for (Py_ssize_t y = first_row; y < end_row; ++y) luma_row(rgb + y * width * 3, gray + (y - first_row) * width, width);
}

// Vertical pass: out row i combines input rows first[i] - row_offset + k. The accumulator row keeps every tap a
// contiguous multiply-add over x.
HOT_LOOP static void vertical_pass(const uint8_t* restrict src,  // [rows read, width], row 0 is input row row_offset
                                   uint8_t* restrict dst,        // [pass->out_size, width]
                                   int32_t* restrict acc,        // [width] scratch
                                   Py_ssize_t width, Py_ssize_t row_offset, const ResamplePass* pass) {
  for (Py_ssize_t i = 0; i < pass->out_size; ++i) {
    const int32_t* weights = pass->coeffs + i * pass->taps;
    const uint8_t* rows = src + (pass->first[i] - row_offset) * width;
    for (Py_ssize_t x = 0; x < width; ++x) acc[x] = 1 << (kPrecisionBits - 1);
    for (int32_t k = 0; k < pass->count[i]; ++k) {
      const int32_t weight = weights[k];
      const uint8_t* row = rows + k * width;
      for (Py_ssize_t x = 0; x < width; ++x) acc[x] += weight * (int32_t)row[x];
    }
    uint8_t* out = dst + i * width;
    for (Py_ssize_t x = 0; x < width; ++x) out[x] = clip8(acc[x]);
  }
}

#if USE_SSE2
// 16x16 bytes in SSE2 registers, transposed in place: tile[l] holds row l on entry, column l on return. Four
// interleave stages: bytes, 16-bit pairs, 32-bit quads, 64-bit halves.
static inline void transpose_tile(__m128i* tile) {
  __m128i pairs[16], quads[16], octs[16];
  // pairs[2g + h]: rows 2g, 2g + 1 interleaved, columns 8h .. 8h + 7.
  for (int g = 0; g < 8; ++g) {
    pairs[2 * g] = _mm_unpacklo_epi8(tile[2 * g], tile[2 * g + 1]);
    pairs[2 * g + 1] = _mm_unpackhi_epi8(tile[2 * g], tile[2 * g + 1]);
  }
  // quads[4q + m]: rows 4q .. 4q + 3, columns 4m .. 4m + 3.
  for (int q = 0; q < 4; ++q) {
    for (int h = 0; h < 2; ++h) {
      quads[4 * q + 2 * h] = _mm_unpacklo_epi16(pairs[4 * q + h], pairs[4 * q + 2 + h]);
      quads[4 * q + 2 * h + 1] = _mm_unpackhi_epi16(pairs[4 * q + h], pairs[4 * q + 2 + h]);
    }
  }
  // octs[8o + n]: rows 8o .. 8o + 7, columns 2n, 2n + 1.
  for (int o = 0; o < 2; ++o) {
    for (int m = 0; m < 4; ++m) {
      octs[8 * o + 2 * m] = _mm_unpacklo_epi32(quads[8 * o + m], quads[8 * o + 4 + m]);
      octs[8 * o + 2 * m + 1] = _mm_unpackhi_epi32(quads[8 * o + m], quads[8 * o + 4 + m]);
    }
  }
  for (int n = 0; n < 8; ++n) {
    tile[2 * n] = _mm_unpacklo_epi64(octs[n], octs[8 + n]);
    tile[2 * n + 1] = _mm_unpackhi_epi64(octs[n], octs[8 + n]);
  }
}
#endif

// columns[x][l] = rows[l][x] for x in [x_begin, x_end), widened to int32 here once, so that the multiply-adds load
// their 16 lanes as they are (each input column is read by about four output windows).
static inline void transpose_in(const uint8_t* const* rows,  // [kBlockRows] pointers to rows of >= x_end bytes
                                int32_t* columns,            // [x_end, kBlockRows]
                                Py_ssize_t x_begin, Py_ssize_t x_end) {
  Py_ssize_t x = x_begin;
#if USE_SSE2
  const __m128i zero = _mm_setzero_si128();
  for (; x + 16 <= x_end; x += 16) {
    __m128i tile[16];
    for (int l = 0; l < 16; ++l) tile[l] = _mm_loadu_si128((const __m128i*)(rows[l] + x));
    transpose_tile(tile);
    for (int n = 0; n < 16; ++n) {
      const __m128i low = _mm_unpacklo_epi8(tile[n], zero), high = _mm_unpackhi_epi8(tile[n], zero);
      __m128i* lanes = (__m128i*)(columns + (x + n) * kBlockRows);
      _mm_storeu_si128(lanes, _mm_unpacklo_epi16(low, zero));
      _mm_storeu_si128(lanes + 1, _mm_unpackhi_epi16(low, zero));
      _mm_storeu_si128(lanes + 2, _mm_unpacklo_epi16(high, zero));
      _mm_storeu_si128(lanes + 3, _mm_unpackhi_epi16(high, zero));
    }
  }
#endif
  for (; x < x_end; ++x) {
    for (int l = 0; l < kBlockRows; ++l) columns[x * kBlockRows + l] = rows[l][x];
  }
}

// rows[l][j] = clamp(results[j][l], 0, 255) for j < out_w and l < block: a block's results back into its output
// rows. (The SSE2 saturating packs, int32 -> int16 -> uint8, are that clamp for the accumulators' integer parts.)
static inline void transpose_out(const int32_t* results,  // [out_w, kBlockRows] integer parts (acc >> 22)
                                 uint8_t* const* rows,    // [block] pointers to output rows of out_w bytes
                                 Py_ssize_t out_w, Py_ssize_t block) {
  Py_ssize_t j = 0;
#if USE_SSE2
  for (; j + 16 <= out_w; j += 16) {
    __m128i tile[16];
    for (int n = 0; n < 16; ++n) {
      const __m128i* lanes = (const __m128i*)(results + (j + n) * kBlockRows);
      const __m128i low = _mm_packs_epi32(_mm_loadu_si128(lanes), _mm_loadu_si128(lanes + 1));
      const __m128i high = _mm_packs_epi32(_mm_loadu_si128(lanes + 2), _mm_loadu_si128(lanes + 3));
      tile[n] = _mm_packus_epi16(low, high);
    }
    transpose_tile(tile);
    for (Py_ssize_t l = 0; l < block; ++l) _mm_storeu_si128((__m128i*)(rows[l] + j), tile[l]);
  }
#endif
  for (; j < out_w; ++j) {
    for (Py_ssize_t l = 0; l < block; ++l) {
      const int32_t value = results[j * kBlockRows + l];
      rows[l][j] = (uint8_t)(value < 0 ? 0 : (value > 255 ? 255 : value));
    }
  }
}

// Horizontal pass over `rows` input rows (gray, or RGB with channels == 3: converted to luma on the way), kBlockRows
// rows at a time. A block's last rows repeat the last input row when `rows` is not a multiple of kBlockRows; those
// lanes are computed and dropped.
HOT_LOOP static void horizontal_pass(const uint8_t* src,         // [rows, width, channels]
                                     uint8_t* dst,               // [rows, pass->out_size]
                                     int32_t* restrict columns,  // [width, kBlockRows] scratch
                                     int32_t* restrict results,  // [pass->out_size, kBlockRows] scratch
                                     uint8_t* gray_block,        // [kBlockRows, width] scratch (channels == 3 only)
                                     Py_ssize_t rows, Py_ssize_t width, int channels, const ResamplePass* pass) {
  const Py_ssize_t out_w = pass->out_size;
  for (Py_ssize_t y0 = 0; y0 < rows; y0 += kBlockRows) {
    const Py_ssize_t block = rows - y0 < kBlockRows ? rows - y0 : kBlockRows;
    // RGB: the block's luma, only in the columns the windows read.
    const uint8_t* row_pointers[kBlockRows];
    uint8_t* out_rows[kBlockRows];
    for (int l = 0; l < kBlockRows; ++l) {
      const Py_ssize_t y = y0 + (l < block ? l : block - 1);
      if (channels == 3) {
        uint8_t* gray = gray_block + (l < block ? l : block - 1) * width;
        if (l < block) luma_row(src + (y * width + pass->lowest) * 3, gray + pass->lowest, pass->end - pass->lowest);
        row_pointers[l] = gray;
      } else {
        row_pointers[l] = src + y * width;
      }
      out_rows[l] = dst + y * out_w;
    }
    transpose_in(row_pointers, columns, pass->lowest, pass->end);
    for (Py_ssize_t j = 0; j < out_w; ++j) {
      int32_t acc[kBlockRows];
      for (int l = 0; l < kBlockRows; ++l) acc[l] = 1 << (kPrecisionBits - 1);
      const int32_t* weights = pass->coeffs + j * pass->taps;
      const int32_t* column = columns + (Py_ssize_t)pass->first[j] * kBlockRows;
      // One 16-lane multiply-add per tap (KEEP_LOOP: not a vectorized tap loop with 16 horizontal sums).
      for (int32_t k = 0; k < pass->count[j]; ++k, column += kBlockRows) {
        const int32_t weight = weights[k];
        KEEP_LOOP
        for (int l = 0; l < kBlockRows; ++l) acc[l] += weight * column[l];
      }
      int32_t* result = results + j * kBlockRows;
      for (int l = 0; l < kBlockRows; ++l) result[l] = acc[l] >> kPrecisionBits;
    }
    transpose_out(results, out_rows, out_w, block);
  }
}

// Everything the arithmetic needs, checked and allocated while the GIL is held.
typedef struct {
  const uint8_t* frame;  // [height, width, channels]
  uint8_t* out;          // [out_h, out_w]
  Py_ssize_t height, width;
  int channels;
  const ResamplePass* rows;  // NULL: no vertical pass (out_h == height)
  const ResamplePass* cols;  // NULL: no horizontal pass (out_w == width)
  int vertical_first;
  uint8_t* between;     // [rows->out_size, width] or [rows->end - rows->lowest, out_w]: the uint8 image between passes
  uint8_t* gray;        // [rows->end - rows->lowest, width]: luma of an RGB frame before a vertical pass
  int32_t* columns;     // [width, kBlockRows]
  int32_t* results;     // [out_w, kBlockRows]
  uint8_t* gray_block;  // [kBlockRows, width]
  int32_t* acc;         // [width]
} ResizeJob;

static void run_resize(const ResizeJob* job) {
  const Py_ssize_t height = job->height, width = job->width;
  const Py_ssize_t out_w = job->cols ? job->cols->out_size : width;
  if (!job->rows && !job->cols) {
    if (job->channels == 3) {
      luma_rows(job->frame, job->out, width, 0, height);
    } else {
      memcpy(job->out, job->frame, (size_t)(height * width));
    }
    return;
  }
  if (!job->rows) {
    horizontal_pass(job->frame, job->out, job->columns, job->results, job->gray_block, height, width, job->channels,
                    job->cols);
    return;
  }
  const ResamplePass* rows = job->rows;
  if (job->cols && !job->vertical_first) {
    // Only the rows [lowest, end) the vertical pass reads are resampled horizontally.
    const uint8_t* first_row = job->frame + rows->lowest * width * job->channels;
    horizontal_pass(first_row, job->between, job->columns, job->results, job->gray_block, rows->end - rows->lowest,
                    width, job->channels, job->cols);
    vertical_pass(job->between, job->out, job->acc, out_w, rows->lowest, rows);
    return;
  }
  // The vertical pass reads gray rows [lowest, end): the frame's own, or their luma.
  const uint8_t* gray_rows = job->frame + rows->lowest * width;
  if (job->channels == 3) {
    luma_rows(job->frame, job->gray, width, rows->lowest, rows->end);
    gray_rows = job->gray;
  }
  if (!job->cols) {
    vertical_pass(gray_rows, job->out, job->acc, width, rows->lowest, rows);
    return;
  }
  vertical_pass(gray_rows, job->between, job->acc, width, rows->lowest, rows);
  horizontal_pass(job->between, job->out, job->columns, job->results, job->gray_block, rows->out_size, width, 1,
                  job->cols);
}

// ---- Python argument handling ----

static int is_format(const Py_buffer* view, const char* codes) {
  const char* format = view->format ? view->format : "B";
  if (*format == '@' || *format == '=') ++format;  // native byte order
  return format[0] != '\0' && format[1] == '\0' && strchr(codes, format[0]) != NULL;
}

// The views of one pass table (first, count, coeffs), kept until the call ends.
typedef struct {
  Py_buffer first, count, coeffs;
  int held;  // how many of the three views are held
} TableViews;

static void release_table(TableViews* views) {
  Py_buffer* all[3] = {&views->first, &views->count, &views->coeffs};
  for (int i = 0; i < views->held; ++i) PyBuffer_Release(all[i]);
  views->held = 0;
}

static int int32_view(PyObject* object, Py_buffer* view, int ndim, const char* what) {
  if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
  const char* codes = sizeof(long) == 4 ? "il" : "i";
  if (view->itemsize != 4 || !is_format(view, codes) || view->ndim != ndim) {
    PyErr_Format(PyExc_ValueError, "%s: expected a contiguous %d-d int32 array, got format '%s', %d-d", what, ndim,
                 view->format ? view->format : "B", view->ndim);
    PyBuffer_Release(view);
    return -1;
  }
  return 0;
}

// `table` = (first int32[out], count int32[out], coeffs int32[out, taps]) for an axis of `in_size` inputs; checks
// that every window lies inside the input and that its weights cannot overflow the accumulator.
static int read_table(PyObject* table, const char* axis, Py_ssize_t in_size, Py_ssize_t out_size, TableViews* views,
                      ResamplePass* pass) {
  PyObject *first, *count, *coeffs;
  if (!PyTuple_Check(table) || !PyArg_ParseTuple(table, "OOO", &first, &count, &coeffs)) {
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "%s: expected None or a (first, count, coeffs) tuple of int32 arrays", axis);
    return -1;
  }
  if (int32_view(first, &views->first, 1, axis) < 0) return -1;
  views->held = 1;
  if (int32_view(count, &views->count, 1, axis) < 0) return -1;
  views->held = 2;
  if (int32_view(coeffs, &views->coeffs, 2, axis) < 0) return -1;
  views->held = 3;
  const Py_ssize_t taps = views->coeffs.shape[1];
  if (views->first.shape[0] != out_size || views->count.shape[0] != out_size || views->coeffs.shape[0] != out_size) {
    PyErr_Format(PyExc_ValueError, "%s: expected tables of %zd outputs (first, count, coeffs rows), got %zd, %zd, %zd",
                 axis, out_size, views->first.shape[0], views->count.shape[0], views->coeffs.shape[0]);
    return -1;
  }
  pass->out_size = out_size;
  pass->taps = taps;
  pass->first = (const int32_t*)views->first.buf;
  pass->count = (const int32_t*)views->count.buf;
  pass->coeffs = (const int32_t*)views->coeffs.buf;
  pass->lowest = in_size;
  pass->end = 0;
  for (Py_ssize_t i = 0; i < out_size; ++i) {
    const Py_ssize_t start = pass->first[i], length = pass->count[i];
    if (start < 0 || length < 1 || length > taps || start + length > in_size) {
      PyErr_Format(PyExc_ValueError, "%s: output %zd reads inputs [%zd, %zd + %zd) of %zd with rows of %zd taps", axis,
                   i, start, start, length, in_size, taps);
      return -1;
    }
    int64_t magnitude = 0;
    for (Py_ssize_t k = 0; k < length; ++k) magnitude += llabs((long long)pass->coeffs[i * taps + k]);
    if (magnitude > kMaxAbsWeightSum) {
      PyErr_Format(PyExc_ValueError, "%s: output %zd has weights of total magnitude %lld > 2^23 (not Pillow's)", axis,
                   i, (long long)magnitude);
      return -1;
    }
    if (start < pass->lowest) pass->lowest = start;
    if (start + length > pass->end) pass->end = start + length;
  }
  return 0;
}

static int overlaps(const Py_buffer* a, const Py_buffer* b) {
  const char *a0 = (const char*)a->buf, *b0 = (const char*)b->buf;
  return a0 < b0 + b->len && b0 < a0 + a->len;
}

PyDoc_STRVAR(gray_resize_doc,
             "gray_resize(frame, out, rows, cols, vertical_first)\n--\n\n"
             "Pillow's convert('L') + resize((out_w, out_h), BICUBIC) of `frame`, written into `out`.\n\n"
             "frame: C-contiguous uint8 [H, W] or [H, W, 3] (RGB). out: writable C-contiguous uint8 [out_h, out_w].\n"
             "rows / cols: None when that axis keeps its size, else (first int32[n], count int32[n], coeffs int32[n, "
             "taps]): output i = sum_k coeffs[i, k] * input[first[i] + k] (22 fractional bits).\n"
             "vertical_first: Pillow's pass order when both passes run. Releases the GIL while it computes.");

static PyObject* gray_resize(PyObject* self, PyObject* args) {
  (void)self;
  PyObject *frame_object, *out_object, *rows_object, *cols_object;
  int vertical_first;
  if (!PyArg_ParseTuple(args, "OOOOp:gray_resize", &frame_object, &out_object, &rows_object, &cols_object,
                        &vertical_first))
    return NULL;
  Py_buffer frame, out;
  TableViews row_views = {.held = 0}, col_views = {.held = 0};
  ResamplePass row_pass, col_pass;
  ResizeJob job = {0};
  PyObject* result = NULL;
  int frame_held = 0, out_held = 0;

  if (PyObject_GetBuffer(frame_object, &frame, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
  frame_held = 1;
  if (PyObject_GetBuffer(out_object, &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto done;
  out_held = 1;
  if (frame.itemsize != 1 || !is_format(&frame, "B") ||
      !(frame.ndim == 2 || (frame.ndim == 3 && frame.shape[2] == 3)) || frame.shape[0] < 1 || frame.shape[1] < 1) {
    PyErr_SetString(PyExc_ValueError, "frame: expected a non-empty C-contiguous uint8 [H, W] or [H, W, 3] array");
    goto done;
  }
  if (out.itemsize != 1 || !is_format(&out, "B") || out.ndim != 2 || out.shape[0] < 1 || out.shape[1] < 1) {
    PyErr_SetString(PyExc_ValueError, "out: expected a non-empty writable C-contiguous uint8 [out_h, out_w] array");
    goto done;
  }
  if (overlaps(&frame, &out)) {
    PyErr_SetString(PyExc_ValueError, "out: shares memory with frame; pass a separate output array");
    goto done;
  }
  job.frame = (const uint8_t*)frame.buf;
  job.out = (uint8_t*)out.buf;
  job.height = frame.shape[0];
  job.width = frame.shape[1];
  job.channels = frame.ndim == 3 ? 3 : 1;
  job.vertical_first = vertical_first;
  const Py_ssize_t out_h = out.shape[0], out_w = out.shape[1];
  if (rows_object != Py_None) {
    if (read_table(rows_object, "rows", job.height, out_h, &row_views, &row_pass) < 0) goto done;
    job.rows = &row_pass;
  } else if (out_h != job.height) {
    PyErr_Format(PyExc_ValueError, "rows: None keeps the height, but the frame has %zd rows and out %zd", job.height,
                 out_h);
    goto done;
  }
  if (cols_object != Py_None) {
    if (read_table(cols_object, "cols", job.width, out_w, &col_views, &col_pass) < 0) goto done;
    job.cols = &col_pass;
  } else if (out_w != job.width) {
    PyErr_Format(PyExc_ValueError, "cols: None keeps the width, but the frame has %zd columns and out %zd", job.width,
                 out_w);
    goto done;
  }

  const Py_ssize_t width = job.width;
  const Py_ssize_t rows_read = job.rows ? job.rows->end - job.rows->lowest : 0;
  size_t between = 0, gray = 0, acc = 0;
  if (job.rows) {
    acc = (size_t)((job.cols && !job.vertical_first) ? out_w : width);
    if (job.channels == 3 && (!job.cols || job.vertical_first)) gray = (size_t)(rows_read * width);
    if (job.cols) between = (size_t)(job.vertical_first ? out_h * width : rows_read * out_w);
  }
  const size_t columns = job.cols ? (size_t)(width * kBlockRows) : 0;
  const size_t results = job.cols ? (size_t)(out_w * kBlockRows) : 0;
  const size_t gray_block = job.cols && job.channels == 3 ? (size_t)(width * kBlockRows) : 0;
  // One allocation for every scratch buffer, the int32 ones first (PyMem_RawMalloc aligns for any scalar type).
  unsigned char* scratch =
      PyMem_RawMalloc((acc + columns + results) * sizeof(int32_t) + between + gray + gray_block + 1);
  if (!scratch) {
    PyErr_NoMemory();
    goto done;
  }
  job.acc = (int32_t*)scratch;
  job.columns = job.acc + acc;
  job.results = job.columns + columns;
  job.between = (uint8_t*)(job.results + results);
  job.gray = job.between + between;
  job.gray_block = job.gray + gray;

  Py_BEGIN_ALLOW_THREADS
  run_resize(&job);
  Py_END_ALLOW_THREADS
  PyMem_RawFree(scratch);
  result = Py_NewRef(Py_None);

done:
  release_table(&row_views);
  release_table(&col_views);
  if (out_held) PyBuffer_Release(&out);
  if (frame_held) PyBuffer_Release(&frame);
  return result;
}

static PyMethodDef frame_resize_methods[] = {
    {"gray_resize", gray_resize, METH_VARARGS, gray_resize_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef frame_resize_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "engine._frame_resize",
    .m_doc = "Pillow-exact gray + bicubic resize of uint8 host frames (engine.preprocess uses it when it is built).",
    .m_size = 0,
    .m_methods = frame_resize_methods,
};

PyMODINIT_FUNC PyInit__frame_resize(void) { return PyModule_Create(&frame_resize_module); }
