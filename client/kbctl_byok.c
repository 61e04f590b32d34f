/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_byok.c: kbctl's BYOK handlers: the broker's key-exchange key, and
 * wrapping a PEM private key into a .byok offline. */
#include "kbctl.h"

#include <stdlib.h>
#include <string.h>

#include "byok_wrap.h"
#include "kb_secmem.h"
#include "kbctl_out.h"
#include "kbctl_secret.h"
#include "keybroker.pb-c.h"

#ifndef KB_VERSION
#define KB_VERSION "unknown"
#endif

/* PEM is printable ASCII in lines: anything else is not printed raw. */
static int
pem_is_plain(const char *s)
{
	for (; *s != '\0'; s++)
		if ((*s < 0x20 || *s > 0x7e) && *s != '\n' && *s != '\r')
			return 0;
	return 1;
}

static int
exchange_key(struct kbctl *k, const struct kbctl_args *a, const char *method)
{
	Keybroker__V1__GetKeyExchangeKeyRequest req =
	    KEYBROKER__V1__GET_KEY_EXCHANGE_KEY_REQUEST__INIT;
	Keybroker__V1__KeyExchangeKey *x;
	const char *path = kbctl_flag(a, "--out");
	struct kbctl_out_file *f = NULL;
	ProtobufCMessage *m = NULL;
	enum kb_err e;
	int rc;

	/* A public key: readable by others is fine. */
	if ((rc = kbctl_out_open(a, path, 0644, &f)) >= 0)
		return rc;
	req.tenant_id = (char *)a->argv[0];
	if ((rc = kbctl_call(k, method, &req.base,
	         &keybroker__v1__key_exchange_key__descriptor, &m))
	    != KBCTL_EXIT_OK) {
		kbctl_out_file_abort(f);
		return rc;
	}
	x = (Keybroker__V1__KeyExchangeKey *)m;
	if (x->public_key_pem[0] == '\0' || !pem_is_plain(x->public_key_pem)) {
		fprintf(stderr,
		    "kbctl: INTERNAL: the broker's key-exchange key is not "
		    "PEM text\n");
		kbctl_out_file_abort(f);
		kb_wire_free(m);
		return KBCTL_EXIT_FAIL;
	}
	if (f != NULL
	    && (e = kbctl_out_file_commit(
	            f, x->public_key_pem, strlen(x->public_key_pem)))
	        != KB_OK) {
		kb_wire_free(m);
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	}
	if (k->json) {
		json_t *o = json_object();

		kbctl_jset(o, "kid", kbctl_jstr(x->kid));
		kbctl_jset(o, "public_key_pem", kbctl_jstr(x->public_key_pem));
		kbctl_jset(o, "wrap_algorithm", kbctl_jstr(x->wrap_algorithm));
		if (path != NULL)
			kbctl_jset(o, "public_key_file", kbctl_jstr(path));
		rc = kbctl_json_print(o);
	} else {
		kbctl_kv("kid", x->kid);
		kbctl_kv("wrap_algorithm", kbctl_or_dash(x->wrap_algorithm));
		if (path != NULL) {
			kbctl_kv("public_key_file", path);
		} else {
			fputs(x->public_key_pem, stdout);
			if (x->public_key_pem[strlen(x->public_key_pem) - 1]
			    != '\n')
				putchar('\n');
		}
	}
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_byok_kek(struct kbctl *k, const struct kbctl_args *a)
{
	return exchange_key(k, a, KB_METHOD_GET_KEY_EXCHANGE_KEY);
}

int
kbctl_cmd_byok_rotate_kek(struct kbctl *k, const struct kbctl_args *a)
{
	return exchange_key(k, a, KB_METHOD_ROTATE_KEY_EXCHANGE_KEY);
}

/* The KEK file of `byok wrap`: PEM, or the JSON of `byok kek --json`
 * whose public_key_pem and kid are taken. On -1, *pem (NUL-terminated)
 * and *kid_out (or NULL) are malloc'd for the caller. */
static int
kek_read(
    const struct kbctl_args *a, const char *path, char **pem, char **kid_out)
{
	uint8_t *buf = NULL;
	size_t len = 0, i = 0;
	json_t *doc = NULL, *jp, *jk;
	json_error_t jerr;
	enum kb_err e;
	int rc = KBCTL_EXIT_FAIL;

	*pem = NULL;
	*kid_out = NULL;
	if ((e = kbctl_key_file_read(path, &buf, &len)) != KB_OK)
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	while (i < len
	    && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r'
	        || buf[i] == '\n'))
		i++;
	if (i == len || buf[i] != '{') {
		if ((*pem = malloc(len + 1)) == NULL)
			goto oom;
		memcpy(*pem, buf, len);
		(*pem)[len] = '\0';
		rc = -1;
		goto out;
	}
	if ((doc = json_loadb((const char *)buf, len, 0, &jerr)) == NULL) {
		fprintf(stderr, "kbctl: --kek %s: not JSON (line %d: %s)\n",
		    path, jerr.line, jerr.text);
		goto out;
	}
	jp = json_object_get(doc, "public_key_pem");
	jk = json_object_get(doc, "kid");
	if (!json_is_string(jp)) {
		fprintf(stderr,
		    "kbctl: --kek %s: JSON without a \"public_key_pem\" string "
		    "(expected the output of 'kbctl byok kek TENANT --json')\n",
		    path);
		goto out;
	}
	if ((*pem = strdup(json_string_value(jp))) == NULL
	    || (json_is_string(jk)
	        && (*kid_out = strdup(json_string_value(jk))) == NULL))
		goto oom;
	rc = -1;
	goto out;
oom:
	fprintf(stderr, "kbctl: out of memory\n");
	rc = KBCTL_EXIT_FAIL;
out:
	if (rc != -1) {
		free(*pem);
		free(*kid_out);
		*pem = NULL;
		*kid_out = NULL;
	}
	json_decref(doc);
	kbctl_key_file_free(buf, len);
	(void)a;
	return rc;
}

int
kbctl_cmd_byok_wrap(struct kbctl *k, const struct kbctl_args *a)
{
	const char *kek_path = kbctl_flag(a, "--kek");
	const char *key_path = kbctl_flag(a, "--key");
	const char *path = kbctl_flag(a, "--out");
	const char *kid = kbctl_flag(a, "--kid");
	struct kbctl_out_file *f = NULL;
	EVP_PKEY *kek = NULL, *key = NULL;
	uint8_t *keybuf = NULL; /* secret */
	size_t keylen = 0, doc_len = 0, pw_len = 0;
	char *pem = NULL, *json_kid = NULL, *doc = NULL, *pw = NULL;
	char fp[65], prompt[300], what[300];
	enum kb_err e;
	int rc;

	if ((rc = kbctl_out_open(a, path, 0600, &f)) >= 0)
		return rc;
	if ((rc = kek_read(a, kek_path, &pem, &json_kid)) >= 0)
		goto out;
	if (kid != NULL && json_kid != NULL && strcmp(kid, json_kid) != 0) {
		rc = kbctl_usage_error(a,
		    "--kid \"%s\" is not the kid in %s (\"%s\"); leave --kid "
		    "out to use the file's",
		    kid, kek_path, json_kid);
		goto out;
	}
	if (kid == NULL)
		kid = json_kid;
	if (kid == NULL || *kid == '\0') {
		rc = kbctl_usage_error(a,
		    "missing --kid KID: %s is PEM, which carries no kid "
		    "('kbctl "
		    "byok kek TENANT' prints it; its --json output carries "
		    "both)",
		    kek_path);
		goto out;
	}
	if ((e = byok_wrap_load_kek(pem, strlen(pem), &kek)) != KB_OK) {
		rc = kbctl_err(
		    kb_err_wrap(e, "--kek %s", kek_path), KBCTL_EXIT_FAIL);
		goto out;
	}
	if ((e = kbctl_key_file_read(key_path, &keybuf, &keylen)) != KB_OK) {
		rc = kbctl_err(e, KBCTL_EXIT_FAIL);
		goto out;
	}
	if (byok_wrap_key_is_encrypted(keybuf, keylen)) {
		snprintf(prompt, sizeof(prompt), "Password for %s:", key_path);
		snprintf(what, sizeof(what),
		    "%s is encrypted and needs its password", key_path);
		if ((rc = kbctl_password_get(
		         a, prompt, NULL, what, &pw, &pw_len))
		    >= 0)
			goto out;
	}
	e = byok_wrap_load_key(keybuf, keylen, pw, &key);
	kbctl_password_free(pw);
	pw = NULL;
	if (e != KB_OK) {
		rc = kbctl_err(
		    kb_err_wrap(e, "--key %s", key_path), KBCTL_EXIT_FAIL);
		goto out;
	}
	if ((e = byok_wrap_fingerprint(key, fp)) != KB_OK
	    || (e = byok_wrap_make(kek, kid, key, "kbctl byok wrap " KB_VERSION,
	            &doc, &doc_len))
	        != KB_OK) {
		rc = kbctl_err(e, KBCTL_EXIT_FAIL);
		goto out;
	}
	e = kbctl_out_file_commit(f, doc, doc_len);
	f = NULL;
	if (e != KB_OK) {
		rc = kbctl_err(e, KBCTL_EXIT_FAIL);
		goto out;
	}
	if (k->json) {
		json_t *o = json_object();

		kbctl_jset(o, "byok_file", kbctl_jstr(path));
		kbctl_jset(o, "kid", kbctl_jstr(kid));
		kbctl_jset(o, "fingerprint", kbctl_jstr(fp));
		rc = kbctl_json_print(o);
	} else {
		kbctl_kv("byok_file", path);
		kbctl_kv("kid", kid);
		kbctl_kv("fingerprint", fp);
		fprintf(stderr,
		    "kbctl: upload it with 'kbctl keys upload TENANT %s' (the "
		    "tenant whose KEK this is)\n",
		    path);
		rc = KBCTL_EXIT_OK;
	}
out:
	kbctl_out_file_abort(f);
	kbctl_password_free(pw);
	kbctl_key_file_free(keybuf, keylen);
	EVP_PKEY_free(key); /* wipes */
	EVP_PKEY_free(kek);
	free(pem);
	free(json_kid);
	free(doc);
	return rc;
}
