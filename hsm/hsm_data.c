/* SPDX-License-Identifier: Apache-2.0 */
/* hsm_data.c: small private data objects in the token (CKO_DATA), such as
 * the audit log's anchor: readable and writable only by a session that
 * logged in with the PIN, so an edit of the database cannot forge one and a
 * session without the PIN cannot see, replace or destroy one. */
#include <stdlib.h>
#include <string.h>

#include "hsm_int.h"

#define DATA_APPLICATION "keybroker"

/* Data objects of ours cannot be rewritten in place (SoftHSMv2 keeps
 * CKA_VALUE read-only once made), so a write makes a new object and then
 * destroys the old: a crash between the two leaves both, never none. The
 * value carries a generation, and the newest wins. */
#define DATA_MAGIC "kbd1"
#define DATA_HDR (4 + 8)
#define DATA_FIND_MAX 4
/* Another process on the token (another broker) may replace an object
 * between our find and our read of it: the search is made again. */
#define DATA_FIND_TRIES 5

struct data_obj {
	CK_OBJECT_HANDLE obj;
	uint64_t gen;
	uint8_t *value; /* without the header */
	size_t len;
};

static void
data_free(struct data_obj *v, CK_ULONG n)
{
	CK_ULONG i;

	for (i = 0; i < n; i++)
		free(v[i].value);
}

/* Every data object (application, label) of a logged-in session, each
 * with its generation; *newest indexes the newest (when *n > 0). */
static enum kb_err
data_find(struct hsm *h, CK_SESSION_HANDLE sh, const char *label,
    struct data_obj *v, CK_ULONG *n, CK_ULONG *newest, CK_RV *rvp)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_TOKEN, &yes, sizeof(yes)},
	    {CKA_PRIVATE, &yes, sizeof(yes)},
	    {CKA_APPLICATION, (void *)DATA_APPLICATION,
	        sizeof(DATA_APPLICATION) - 1},
	    {CKA_LABEL, (void *)label, strlen(label)},
	};
	CK_OBJECT_HANDLE o[DATA_FIND_MAX + 1];
	CK_ULONG i, k;
	CK_RV rv, rv2;
	uint8_t *buf;
	size_t len;
	int tries = 0;

again:
	*n = 0;
	*newest = 0;
	if ((rv = h->m->C_FindObjectsInit(sh, t, 5)) == CKR_OK) {
		rv = h->m->C_FindObjects(sh, o, DATA_FIND_MAX + 1, &k);
		rv2 = h->m->C_FindObjectsFinal(sh);
		if (rv == CKR_OK)
			rv = rv2;
	}
	*rvp = rv;
	if (rv != CKR_OK)
		return hsm_p11_err("C_FindObjects", rv, label);
	if (k > DATA_FIND_MAX)
		return kb_errf(KB_ERR_CORRUPT,
		    "the token holds more than %d "
		    "data objects %s: remove the ones the broker did not make",
		    DATA_FIND_MAX, label);
	for (i = 0; i < k; i++) {
		if ((rv = hsm_attr_get(h, sh, o[i], CKA_VALUE, &buf, &len))
		    != CKR_OK) {
			data_free(v, *n);
			if (rv == CKR_OBJECT_HANDLE_INVALID
			    && ++tries < DATA_FIND_TRIES)
				goto again; /* destroyed since found */
			*rvp = rv;
			return hsm_p11_err("C_GetAttributeValue", rv, label);
		}
		if (len < DATA_HDR || memcmp(buf, DATA_MAGIC, 4) != 0) {
			free(buf);
			data_free(v, *n);
			return kb_errf(KB_ERR_CORRUPT,
			    "the token's data object %s "
			    "is not in the broker's format",
			    label);
		}
		v[*n].obj = o[i];
		v[*n].gen = 0;
		for (size_t b = 0; b < 8; b++)
			v[*n].gen = v[*n].gen << 8 | buf[4 + b];
		v[*n].len = len - DATA_HDR;
		memmove(buf, buf + DATA_HDR, v[*n].len);
		v[*n].value = buf;
		if (v[*n].gen > v[*newest].gen)
			*newest = *n;
		(*n)++;
	}
	return KB_OK;
}

static enum kb_err
data_label_check(const char *label)
{
	if (label == NULL || label[0] == '\0' || strlen(label) > HSM_LABEL_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "a data object needs a label of 1 to %d bytes",
		    HSM_LABEL_MAX);
	return KB_OK;
}

enum kb_err
hsm_data_read(struct hsm *h, const char *label, uint8_t **out, size_t *len)
{
	struct data_obj v[DATA_FIND_MAX];
	struct pooled p;
	CK_ULONG n = 0, newest = 0;
	CK_RV rv = CKR_OK;
	enum kb_err r;

	*out = NULL;
	*len = 0;
	if ((r = data_label_check(label)) != KB_OK)
		return r;
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		return r;
	pthread_rwlock_rdlock(&h->objects_rw);
	r = data_find(h, p.sh, label, v, &n, &newest, &rv);
	pthread_rwlock_unlock(&h->objects_rw);
	hsm_pool_put(h, &p, rv);
	if (r != KB_OK)
		return r;
	if (n == 0)
		return kb_errf(
		    KB_ERR_NOT_FOUND, "no data object %s in the token", label);
	*out = v[newest].value;
	*len = v[newest].len;
	v[newest].value = NULL;
	data_free(v, n);
	return KB_OK;
}

enum kb_err
hsm_data_write(
    struct hsm *h, const char *label, const uint8_t *data, size_t len)
{
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE t[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_TOKEN, &yes, sizeof(yes)},
	    {CKA_PRIVATE, &yes, sizeof(yes)},
	    {CKA_APPLICATION, (void *)DATA_APPLICATION,
	        sizeof(DATA_APPLICATION) - 1},
	    {CKA_LABEL, (void *)label, 0},
	    {CKA_VALUE, NULL, 0},
	};
	struct data_obj v[DATA_FIND_MAX];
	struct pooled p;
	CK_OBJECT_HANDLE obj;
	CK_ULONG n = 0, newest = 0, i;
	uint64_t gen;
	uint8_t *buf;
	CK_RV rv = CKR_OK;
	enum kb_err r;

	if ((r = data_label_check(label)) != KB_OK)
		return r;
	if ((buf = malloc(DATA_HDR + len)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	t[4].ulValueLen = strlen(label);
	if ((r = hsm_pool_get(h, &p)) != KB_OK) {
		free(buf);
		return r;
	}
	pthread_mutex_lock(&h->create_mu);
	pthread_rwlock_wrlock(&h->objects_rw);
	if ((r = data_find(h, p.sh, label, v, &n, &newest, &rv)) != KB_OK)
		goto out;
	gen = n > 0 ? v[newest].gen + 1 : 1;
	memcpy(buf, DATA_MAGIC, 4);
	for (i = 0; i < 8; i++)
		buf[4 + i] = (uint8_t)(gen >> (56 - 8 * i));
	memcpy(buf + DATA_HDR, data, len);
	t[5].pValue = buf;
	t[5].ulValueLen = DATA_HDR + len;
	if ((rv = hsm_create_object(h, p.sh, t, 6, &obj)) != CKR_OK) {
		r = hsm_p11_err("C_CreateObject", rv, label);
		goto out;
	}
	/* The new one is in the token: the old ones may go. */
	for (i = 0; i < n; i++)
		if ((rv = h->m->C_DestroyObject(p.sh, v[i].obj)) != CKR_OK) {
			r = hsm_p11_err("C_DestroyObject", rv, label);
			goto out;
		}
	r = KB_OK;
out:
	pthread_rwlock_unlock(&h->objects_rw);
	pthread_mutex_unlock(&h->create_mu);
	hsm_pool_put(h, &p, rv);
	data_free(v, n);
	free(buf);
	return r;
}
