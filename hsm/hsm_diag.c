/* SPDX-License-Identifier: Apache-2.0 */
/* hsm_diag.c: what the doctor reads of the token: its login, its flags and
 * the mechanisms hsm/ uses. Only C_GetSessionInfo, C_GetTokenInfo and
 * C_GetMechanismInfo: nothing is made or changed. */
#include <stdio.h>
#include <string.h>

#include "hsm_int.h"

#ifndef CKM_AES_KEY_WRAP_PAD
#define CKM_AES_KEY_WRAP_PAD 0x210AUL
#endif

/* Every mechanism hsm/ calls, with the flags its use needs. */
static const struct {
	CK_MECHANISM_TYPE mech;
	const char *name;
	CK_FLAGS flags;
	const char *use;
} needed[] = {
    {CKM_AES_GCM, "CKM_AES_GCM", CKF_ENCRYPT | CKF_DECRYPT,
        "seals and opens every data key"},
    {CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN", CKF_GENERATE,
        "makes the platform key and the tenants' KEKs"},
    {CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", CKF_WRAP | CKF_UNWRAP,
        "wraps a tenant's KEK under its key; unwraps .byok uploads"},
    {CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD", CKF_UNWRAP,
        "unwraps the private key of a .byok upload"},
    {CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN",
        CKF_GENERATE_KEY_PAIR, "makes the audit and key-exchange keys"},
    {CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS", CKF_SIGN,
        "signs the audit log's checkpoints"},
};

static const char *
flag_name(CK_FLAGS f)
{
	switch (f) {
	case CKF_ENCRYPT: return "CKF_ENCRYPT";
	case CKF_DECRYPT: return "CKF_DECRYPT";
	case CKF_GENERATE: return "CKF_GENERATE";
	case CKF_GENERATE_KEY_PAIR: return "CKF_GENERATE_KEY_PAIR";
	case CKF_WRAP: return "CKF_WRAP";
	case CKF_UNWRAP: return "CKF_UNWRAP";
	case CKF_SIGN: return "CKF_SIGN";
	default: return "a flag";
	}
}

static void
mech_check(struct hsm *h, CK_SLOT_ID slot, size_t i, struct hsm_diag_mech *m)
{
	CK_MECHANISM_INFO mi;
	CK_FLAGS f, lack;
	CK_RV rv;
	size_t n = 0;

	m->name = needed[i].name;
	m->use = needed[i].use;
	m->ok = 0;
	m->why[0] = '\0';
	if ((rv = h->m->C_GetMechanismInfo(slot, needed[i].mech, &mi))
	    != CKR_OK) {
		snprintf(m->why, sizeof(m->why), "C_GetMechanismInfo: %s",
		    hsm_rv_name(rv));
		return;
	}
	if ((lack = needed[i].flags & ~mi.flags) == 0) {
		m->ok = 1;
		return;
	}
	n = (size_t)snprintf(m->why, sizeof(m->why), "offered without");
	for (f = 1; f != 0 && n < sizeof(m->why); f <<= 1)
		if (lack & f)
			n += (size_t)snprintf(m->why + n, sizeof(m->why) - n,
			    " %s", flag_name(f));
}

enum kb_err
hsm_diagnose(struct hsm *h, struct hsm_diag *out)
{
	CK_TOKEN_INFO ti;
	CK_SLOT_ID slot;
	CK_RV rv;
	size_t i;

	memset(out, 0, sizeof(*out));
	if (hsm_check(h) == KB_OK) {
		out->logged_in = 1;
	} else {
		snprintf(out->login_error, sizeof(out->login_error), "%s",
		    kb_err_msg(KB_ERR_UNAVAILABLE));
		kb_err_clear();
	}
	pthread_mutex_lock(&h->pool_mu);
	slot = h->slot;
	pthread_mutex_unlock(&h->pool_mu);
	if ((rv = h->m->C_GetTokenInfo(slot, &ti)) != CKR_OK)
		return hsm_p11_err("C_GetTokenInfo", rv, NULL);
	out->rng = (ti.flags & CKF_RNG) != 0;
	out->pin_count_low = (ti.flags & CKF_USER_PIN_COUNT_LOW) != 0;
	out->pin_final_try = (ti.flags & CKF_USER_PIN_FINAL_TRY) != 0;
	out->pin_locked = (ti.flags & CKF_USER_PIN_LOCKED) != 0;
	for (i = 0; i < sizeof(needed) / sizeof(needed[0])
	     && out->nmechs < HSM_DIAG_MECHS;
	     i++)
		mech_check(h, slot, i, &out->mechs[out->nmechs++]);
	return KB_OK;
}
