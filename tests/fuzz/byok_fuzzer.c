/* SPDX-License-Identifier: Apache-2.0 */
/* byok_fuzzer.c: libFuzzer target for byok_parse (the Azure .byok JSON
 * format) and keyfile_detect. The whole input is the file. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "byok.h"
#include "kb_err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct byok_file f;
	enum keyfile_format fmt;
	enum kb_err e;

	fmt = keyfile_detect(data, size);
	if (keyfile_format_name(fmt) == NULL)
		abort();
	memset(&f, 0xa5, sizeof(f)); /* byok_parse must set every field */
	e = byok_parse(data, size, &f);
	if (e == KB_OK) {
		/* The shape byok.h promises. */
		if (f.blob == NULL || f.blob_len < BYOK_KEK_BYTES + 16
		    || (f.blob_len - BYOK_KEK_BYTES) % 8 != 0
		    || f.kid[0] == '\0'
		    || memchr(f.kid, '\0', sizeof(f.kid)) == NULL
		    || memchr(f.generator, '\0', sizeof(f.generator)) == NULL)
			abort();
		/* Whatever parses as a .byok must also be detected as one. */
		if (fmt != KEYFILE_BYOK)
			abort();
		byok_file_clear(&f);
		byok_file_clear(&f); /* twice: the second is a no-op */
	} else if (kb_err_msg(e)[0] == '\0') {
		abort();
	}
	kb_err_clear();
	return 0;
}
