/* SPDX-License-Identifier: Apache-2.0 */
/* names.h: validation of identifiers and free text from callers. */
#ifndef KB_NAMES_H
#define KB_NAMES_H

#include "kb_err.h"

#define NAMES_ID_MAX 63
#define NAMES_DISPLAY_MAX 200

/* Tenant ids and environment names: 1..63 characters of [a-z0-9-], starting
 * and ending with a letter or digit. `what` names the field in the message
 * ("tenant id"). KB_ERR_INVALID_ARGUMENT with a message saying the rule. */
enum kb_err names_check_id(const char *what, const char *s);

/* Object ids the broker made and a caller names (keys k-..., backups b-...,
 * jobs j-...): 1..71 characters of [A-Za-z0-9._-], checked before they are
 * echoed into a message, the log or the audit log. */
enum kb_err names_check_object_id(const char *what, const char *s);

/* Display names: valid UTF-8, no control characters, at most 200 bytes. */
enum kb_err names_check_display(const char *what, const char *s);

#endif /* KB_NAMES_H */
