/* SPDX-License-Identifier: Apache-2.0 */
/* byok.c: parse and check Azure Key Vault .byok files; tell key files apart. */
#include "byok.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kb_codec.h"
#include "kb_secmem.h"

#define BYOK_SCHEMA "1.0.0"
#define BYOK_ALG "dir"
#define BYOK_ENC "CKM_RSA_AES_KEY_WRAP"
/* AES-KWP output: at least two 64-bit blocks, whole blocks. */
#define KWP_MIN 16
#define KWP_BLOCK 8

/* A value from the file, for a message: at most 48 bytes, printable ASCII
 * kept, anything else as \xNN. */
static const char *
shown(const char *s, char *buf, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, o = 0;
	unsigned char c;

	for (i = 0; s[i] != '\0' && o + 5 < n; i++) {
		if (i == 48) {
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
			buf[o++] = (char)c;
		} else {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 0xf];
		}
	}
	buf[o] = '\0';
	return buf;
}

static const char *
json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number";
	case JSON_TRUE: return "true";
	case JSON_FALSE: return "false";
	case JSON_NULL: return "null";
	}
	return "an unknown JSON value";
}

/* Decode base64url or base64, padded or not. */
static enum kb_err
b64_decode(const char *s, size_t n, uint8_t **out, size_t *out_len)
{
	uint8_t *buf;
	size_t where = 0;
	char c[8];
	int r;

	*out = NULL;
	*out_len = 0;
	if ((buf = malloc(kb_base64_decoded_max(n))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	r = kb_base64_decode(
	    s, n, buf, kb_base64_decoded_max(n), out_len, &where, 0);
	if (r == KB_B64_BAD_CHAR) {
		char one[2] = {s[where], '\0'};

		free(buf);
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok ciphertext is "
		    "not base64url: '%s' at position %zu",
		    shown(one, c, sizeof(c)), where + 1);
	}
	if (r != 0) {
		free(buf);
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok ciphertext is "
		    "not base64url: %zu characters cannot be a whole number of "
		    "bytes (truncated?)",
		    n);
	}
	*out = buf;
	return KB_OK;
}

/* A required string member of `obj`; names it "header.kid" etc. */
static enum kb_err
member_string(json_t *obj, const char *key, const char *path, const char *want,
    const char **val)
{
	json_t *v = json_object_get(obj, key);

	*val = NULL;
	if (v == NULL)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok has no %s%s%s%s", path,
		    want != NULL ? "; keybroker accepts \"" : "",
		    want != NULL ? want : "", want != NULL ? "\"" : "");
	if (!json_is_string(v))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok %s is %s, not a string", path, json_kind(v));
	*val = json_string_value(v);
	return KB_OK;
}

/* A string member that must equal `want`. */
static enum kb_err
member_expect(json_t *obj, const char *key, const char *path, const char *want,
    int quote_want)
{
	const char *val;
	char buf[256];
	enum kb_err r;

	if ((r = member_string(obj, key, path, want, &val)) != KB_OK)
		return r;
	if (strcmp(val, want) != 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok %s is \"%s\"; keybroker accepts %s%s%s", path,
		    shown(val, buf, sizeof(buf)), quote_want ? "\"" : "", want,
		    quote_want ? "\"" : "");
	return KB_OK;
}

static enum kb_err
parse_root(json_t *root, struct byok_file *out)
{
	json_t *header, *gen;
	const char *kid = NULL, *ct = NULL;
	enum kb_err r;

	if (!json_is_object(root))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok file is %s; a .byok is a JSON object",
		    json_kind(root));
	if ((r = member_expect(
	         root, "schema_version", "schema_version", BYOK_SCHEMA, 1))
	    != KB_OK)
		return r;
	if ((header = json_object_get(root, "header")) == NULL)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "the .byok has no header");
	if (!json_is_object(header))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok header is %s, not an object", json_kind(header));
	if ((r = member_expect(header, "alg", "header.alg", BYOK_ALG, 1))
	        != KB_OK
	    || (r = member_expect(header, "enc", "header.enc", BYOK_ENC, 0))
	        != KB_OK)
		return r;
	if (json_object_get(header, "kid") == NULL)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok has no header.kid: it must name the "
		    "key-exchange key the key was wrapped for");
	if ((r = member_string(header, "kid", "header.kid", NULL, &kid))
	    != KB_OK)
		return r;
	if (kid[0] == '\0')
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok header.kid is empty: it must name the "
		    "key-exchange key the key was wrapped for");
	if (strlen(kid) >= sizeof(out->kid))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok header.kid is %zu bytes; key-exchange key ids "
		    "are at most %zu",
		    strlen(kid), sizeof(out->kid) - 1);
	if ((r = member_string(root, "ciphertext", "ciphertext", NULL, &ct))
	    != KB_OK)
		return r;
	if ((r = b64_decode(ct,
	         json_string_length(json_object_get(root, "ciphertext")),
	         &out->blob, &out->blob_len))
	    != KB_OK)
		return r;
	if (out->blob_len < BYOK_KEK_BYTES + KWP_MIN
	    || (out->blob_len - BYOK_KEK_BYTES) % KWP_BLOCK != 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok ciphertext is %zu bytes; it must be a %d-byte "
		    "RSA-OAEP block (an RSA-2048 key-exchange key) followed by "
		    "an AES key wrap of at least %d bytes in %d-byte blocks",
		    out->blob_len, BYOK_KEK_BYTES, KWP_MIN, KWP_BLOCK);
	snprintf(out->kid, sizeof(out->kid), "%s", kid);
	/* generator is informative: kept if it is a string, cut to fit. */
	gen = json_object_get(root, "generator");
	if (json_is_string(gen))
		snprintf(out->generator, sizeof(out->generator), "%s",
		    json_string_value(gen));
	return KB_OK;
}

enum kb_err
byok_parse(const uint8_t *json, size_t len, struct byok_file *out)
{
	json_error_t jerr;
	json_t *root = NULL;
	enum kb_err r;

	if (out == NULL)
		return kb_errf(KB_ERR_INTERNAL, "byok_parse: no output");
	memset(out, 0, sizeof(*out));
	if (json == NULL || len == 0)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "the .byok file is empty");
	if (len > BYOK_MAX_BYTES)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok file is %zu bytes; keybroker accepts at most %d",
		    len, BYOK_MAX_BYTES);
	/* Windows tools may start UTF-8 text with a byte-order mark. */
	if (len >= 3 && json[0] == 0xef && json[1] == 0xbb && json[2] == 0xbf) {
		json += 3;
		len -= 3;
	}
	root =
	    json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok file is not valid JSON: %s (line %d, column %d)",
		    jerr.text, jerr.line, jerr.column);
	r = parse_root(root, out);
	json_decref(root);
	if (r != KB_OK)
		byok_file_clear(out);
	return r;
}

void
byok_file_clear(struct byok_file *f)
{
	if (f == NULL)
		return;
	kb_freezero(f->blob, f->blob_len);
	kb_wipe(f, sizeof(*f));
}

enum keyfile_format
keyfile_detect(const uint8_t *data, size_t len)
{
	size_t i = 0;

	if (data == NULL || len == 0)
		return KEYFILE_UNKNOWN;
	if (data[0] == 0x30)
		return KEYFILE_PFX;
	if (len >= 3 && data[0] == 0xef && data[1] == 0xbb && data[2] == 0xbf)
		i = 3;
	while (i < len
	    && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r'
	        || data[i] == '\n'))
		i++;
	if (i < len && data[i] == '{')
		return KEYFILE_BYOK;
	return KEYFILE_UNKNOWN;
}

const char *
keyfile_format_name(enum keyfile_format f)
{
	switch (f) {
	case KEYFILE_PFX: return "pfx";
	case KEYFILE_BYOK: return "byok";
	case KEYFILE_UNKNOWN: return "unknown";
	}
	return "unknown";
}
