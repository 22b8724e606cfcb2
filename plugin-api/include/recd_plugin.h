/*
 * recd_plugin.h: the recd plugin ABI, version 1.3, for plugins written in C or C++.
 *
 * This header mirrors plugin-api/src/abi.rs field for field (same order, same types).
 * If the two disagree, abi.rs is right and this file is a bug.
 *
 * A plugin is a shared library that exports one function, recd_plugin_entry, which
 * returns a pointer to a static RecdPluginV1 descriptor. The host (`recd worker`)
 * reads abi_major and abi_minor first and refuses the plugin unless
 * abi_major == RECD_ABI_MAJOR and abi_minor <= RECD_ABI_MINOR; only then does it read
 * the rest of the descriptor.
 *
 * Tables cross the boundary through the Arrow C Data Interface: each table is a struct
 * array (format "+s") whose children are the table's columns.
 *
 * Ownership ("move" semantics of the Arrow C Data Interface):
 *  - Input tables handed to run() are moved to the plugin. The plugin releases each
 *    schema and array it takes (calls its release callback). The host releases any
 *    table whose release callback is still non-NULL after run() returns.
 *  - A batch passed to host->emit() or host->score() as input is moved to the host: the
 *    host takes the structs and leaves the caller's ArrowSchema/ArrowArray released
 *    (release == NULL). The caller must not release them again.
 *  - The batch host->score() writes to out_schema/out_array belongs to the plugin, which
 *    releases it. Pass empty (zeroed or released) output structs: the host overwrites
 *    them without releasing what they held.
 *  - Error messages are copied into a RecdError the caller provides, so no string is
 *    ever freed across the boundary.
 *  - Strings in the descriptor (name, version) are static; RecdTable.name is valid
 *    for the duration of run().
 *
 * Errors: every fallible entry point and callback returns a RECD_* status code; on a
 * non-zero code it also writes the code and a NUL-terminated UTF-8 message (at most
 * RECD_ERROR_MESSAGE_CAP bytes, NUL included) into the RecdError it was given.
 *
 * No exception, longjmp or Rust panic may cross this boundary. The Rust SDK
 * (recd_plugin_api::export_plugin!) wraps every entry point in catch_unwind; C++ plugins
 * must catch everything in create/run/destroy themselves.
 */
#ifndef RECD_PLUGIN_H
#define RECD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------- */
/* Arrow C Data Interface, as given by the Arrow specification                         */
/* (https://arrow.apache.org/docs/format/CDataInterface.html).                         */
/* ---------------------------------------------------------------------------------- */

#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE

#define ARROW_FLAG_DICTIONARY_ORDERED 1
#define ARROW_FLAG_NULLABLE 2
#define ARROW_FLAG_MAP_KEYS_SORTED 4

struct ArrowSchema {
  // Array type description
  const char* format;
  const char* name;
  const char* metadata;
  int64_t flags;
  int64_t n_children;
  struct ArrowSchema** children;
  struct ArrowSchema* dictionary;

  // Release callback
  void (*release)(struct ArrowSchema*);
  // Opaque producer-specific data
  void* private_data;
};

struct ArrowArray {
  // Array data description
  int64_t length;
  int64_t null_count;
  int64_t offset;
  int64_t n_buffers;
  int64_t n_children;
  const void** buffers;
  struct ArrowArray** children;
  struct ArrowArray* dictionary;

  // Release callback
  void (*release)(struct ArrowArray*);
  // Opaque producer-specific data
  void* private_data;
};

#endif  // ARROW_C_DATA_INTERFACE

/* The Arrow C Stream Interface, as given by the Arrow specification
 * (https://arrow.apache.org/docs/format/CStreamInterface.html). */

#ifndef ARROW_C_STREAM_INTERFACE
#define ARROW_C_STREAM_INTERFACE

struct ArrowArrayStream {
  // Callbacks providing stream functionality
  int (*get_schema)(struct ArrowArrayStream*, struct ArrowSchema* out);
  int (*get_next)(struct ArrowArrayStream*, struct ArrowArray* out);
  const char* (*get_last_error)(struct ArrowArrayStream*);

  // Release callback
  void (*release)(struct ArrowArrayStream*);

  // Opaque producer-specific data
  void* private_data;
};

#endif  // ARROW_C_STREAM_INTERFACE

/* ---------------------------------------------------------------------------------- */
/* Versions and names                                                                  */
/* ---------------------------------------------------------------------------------- */

/* Incremented on any incompatible change to the types below. */
#define RECD_ABI_MAJOR 1u
/* Incremented on compatible additions (new trailing fields, new codes). */
#define RECD_ABI_MINOR 3u

/* Name of the one exported entry point. */
#define RECD_ENTRY_SYMBOL "recd_plugin_entry"

/* Capacity of RecdError.message, including the terminating NUL. */
#define RECD_ERROR_MESSAGE_CAP 1024

/* Column names of the rows a plugin emits: user utf8, item utf8, score float32. */
#define RECD_OUTPUT_USER "user"
#define RECD_OUTPUT_ITEM "item"
#define RECD_OUTPUT_SCORE "score"

/* ---------------------------------------------------------------------------------- */
/* Status codes, returned by every fallible entry point and callback                   */
/* ---------------------------------------------------------------------------------- */

#define RECD_OK 0
/* The [params] of the job are invalid for this plugin. */
#define RECD_INVALID_PARAMS 1
/* An input table is missing or has the wrong shape. */
#define RECD_INVALID_INPUT 2
/* The run stopped because the host asked it to. */
#define RECD_CANCELLED 3
/* A host callback failed (scoring, emitting); the message says why. */
#define RECD_HOST 4
/* The plugin panicked (or threw); it was caught at the boundary. */
#define RECD_PANIC 5
/* Any other failure inside the plugin. */
#define RECD_INTERNAL 6

/* ---------------------------------------------------------------------------------- */
/* Log levels for RecdHost.log                                                         */
/* ---------------------------------------------------------------------------------- */

#define RECD_LOG_ERROR 1
#define RECD_LOG_WARN 2
#define RECD_LOG_INFO 3
#define RECD_LOG_DEBUG 4

/* ---------------------------------------------------------------------------------- */
/* Types                                                                               */
/* ---------------------------------------------------------------------------------- */

/* An error as a value: a RECD_* code and a NUL-terminated UTF-8 message.
 * Always allocated by the caller of the function that may fail. */
typedef struct RecdError {
  int32_t code;
  char message[RECD_ERROR_MESSAGE_CAP];
} RecdError;

/* One named input table, as a struct array whose fields are the table's columns.
 * schema and array are embedded by value. */
typedef struct RecdTable {
  /* NUL-terminated name, valid for the duration of run() or check(). */
  const char* name;
  struct ArrowSchema schema;
  struct ArrowArray array;
} RecdTable;

/* Services the host offers to a running plugin. All callbacks take ctx first; none of
 * the function pointers is NULL. The RecdHost pointer is valid only during run(). */
typedef struct RecdHost {
  void* ctx;

  /* Scores a batch with a model of the job (model NULL: the job's model; ABI v1 jobs
   * have exactly one model, so pass NULL). The input is a struct array with one field
   * per model input, named as the model names them; it is moved to the host. The
   * output, one field per model output, is written to out_schema/out_array and is
   * owned by the caller. Returns RECD_OK or RECD_HOST (with err filled in). */
  int32_t (*score)(void* ctx, const char* model, struct ArrowSchema* in_schema,
                   struct ArrowArray* in_array, struct ArrowSchema* out_schema,
                   struct ArrowArray* out_array, RecdError* err);

  /* Hands result rows to the host (moved). Every batch has the same schema, exactly
   * these three fields in this order: user utf8 ("u"), item utf8 ("u"), score
   * float32 ("f"). No nulls, finite scores, no item twice in one user's list, and one
   * user's rows contiguous across the whole run (the daemon rejects the run otherwise).
   * Returns RECD_OK or RECD_HOST (with err filled in). */
  int32_t (*emit)(void* ctx, struct ArrowSchema* schema, struct ArrowArray* array,
                  RecdError* err);

  /* Writes a log line (UTF-8, len bytes, not NUL-terminated) at a RECD_LOG_* level. */
  void (*log)(void* ctx, int32_t level, const uint8_t* msg, size_t len);

  /* Reports progress in the plugin's own units (users, rows...). */
  void (*progress)(void* ctx, uint64_t done, uint64_t total);

  /* Non-zero once the host wants the run to stop; poll it between batches and return
   * RECD_CANCELLED. */
  int32_t (*is_cancelled)(void* ctx);

  /* Since ABI 1.2 (call it only from a plugin built for 1.2 or later: hosts that load
   * such a plugin provide it). Opens input `name` as an Arrow C stream of record
   * batches (struct arrays, as the tables of run()), read from the input's source as
   * the plugin pulls them; the stream is written to *out and owned by the plugin, which
   * releases it. columns[0..n_columns) projects it onto those columns, in that order
   * (n_columns 0: every column); an unknown column is an error. Any input of the job
   * can be opened, any number of times, each stream from the start. Unlike the other
   * callbacks, the stream may be pulled and released from any one thread at a time
   * (never concurrently) until run() returns. Returns RECD_OK, or RECD_HOST with err
   * filled in (an unknown input or column, an unreadable file). */
  int32_t (*open_stream)(void* ctx, const char* name, const char* const* columns,
                         size_t n_columns, struct ArrowArrayStream* out, RecdError* err);

  /* Since ABI 1.3 (call it only from a plugin built for 1.3 or later). Non-zero if this
   * run computes `user` (UTF-8, len bytes). A run can be one shard of a bigger one
   * (`recd run --shard I/N`): the host keeps only the rows of its shard's users, so a
   * plugin may skip the others' work. Calling it is never required; in a run of every
   * user it is always non-zero. */
  int32_t (*in_shard)(void* ctx, const uint8_t* user, size_t len);
} RecdHost;

/* The descriptor a plugin exports (static, immutable). abi_major and abi_minor come
 * first and stay first in every future version, so any host can read them safely. */
typedef struct RecdPluginV1 {
  uint32_t abi_major; /* RECD_ABI_MAJOR */
  uint32_t abi_minor; /* RECD_ABI_MINOR */
  /* NUL-terminated, static. */
  const char* name;
  /* NUL-terminated, static. */
  const char* version;

  /* Validates params (a JSON object, UTF-8, len bytes, not NUL-terminated; the job's
   * [params] table) and creates an instance, written to *instance. */
  int32_t (*create)(const uint8_t* params_json, size_t len, void** instance,
                    RecdError* err);

  /* Runs the strategy once over inputs[0..n_inputs) (moved to the plugin, see the
   * ownership rules above), calling back into host. */
  int32_t (*run)(void* instance, const RecdHost* host, RecdTable* inputs, size_t n_inputs,
                 RecdError* err);

  /* Frees an instance made by create. */
  void (*destroy)(void* instance);

  /* Since ABI 1.1; may be NULL. Checks a job before any run (recd validate, reloads):
   * inputs are the job's tables with their real schemas and no rows, plus the
   * "__model_inputs" table when the job has a model (moved to the plugin, as in run).
   * Must not call back into a host: there is none. Error messages name the job key at
   * fault, e.g. "params.segment_column: ...". Hosts read this field only from plugins
   * whose abi_minor >= 1. */
  int32_t (*check)(void* instance, RecdTable* inputs, size_t n_inputs, RecdError* err);

  /* Since ABI 1.2; may be NULL. Static, NUL-terminated: the comma-separated names of
   * the inputs this plugin reads only through host->open_stream, e.g. "interactions".
   * The host does not read them before run(): run() gets each with its schema and no
   * rows. Hosts read this field only from plugins whose abi_minor >= 2. */
  const char* stream_inputs;
} RecdPluginV1;

/* Marks the entry point as exported when building with -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define RECD_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define RECD_PLUGIN_EXPORT
#endif

/* The one function a plugin exports; returns its static descriptor (never NULL). */
RECD_PLUGIN_EXPORT const RecdPluginV1* recd_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* RECD_PLUGIN_H */
