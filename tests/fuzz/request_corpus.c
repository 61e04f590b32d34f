/* SPDX-License-Identifier: Apache-2.0 */
/* request_corpus.c: write the request fuzzer's seed inputs, one valid
 * request per method (and a few variants), as
 * OUTDIR/<Method>-<caller>: [method index, caller, message bytes].
 *
 *   request_corpus OUTDIR        (tests/fuzz/make-corpus.sh runs it)
 *
 * Byte 0 is the method's index in dispatch_methods[]: when that table
 * changes, run tests/fuzz/make-corpus.sh again and commit the result.
 * Requests name the world request_fuzzer.c builds (tenants acme and
 * globex, environments prod and dev) and its placeholders (request_pki.h).
 * Fields are given as "name=value" (a nested field as "filter.tenant_id",
 * a file of tests/data as "@name"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "dispatch.h"
#include "request_pki.h"

struct seed {
	const char *method;
	enum fuzz_caller caller;
	const char *fields[5];
	const char *variant; /* file name suffix when one is not enough */
};

static const struct seed seeds[] = {
    {"Health.Check", FUZZ_SERVICE, {NULL}},
    {"WhoAmI", FUZZ_ADMIN, {NULL}},
    {"WhoAmI", FUZZ_SERVICE, {NULL}},
    {"WhoAmI", FUZZ_TENANT_ADMIN, {NULL}},
    {"WhoAmI", FUZZ_NONE, {NULL}},
    {"WhoAmI", FUZZ_GARBAGE, {NULL}},
    {"WhoAmI", FUZZ_OTHER_CA, {NULL}},
    {"WhoAmI", FUZZ_EXPIRED, {NULL}},
    {"WhoAmI", FUZZ_NO_ROLE, {NULL}},
    {"CreateTenant", FUZZ_ADMIN, {"id=initech", "display_name=Initech"}},
    {"CreateTenant", FUZZ_TENANT_ADMIN, {"id=hooli", "display_name=Hooli"}},
    {"ListTenants", FUZZ_ADMIN, {"page_size=1"}},
    {"ListTenants", FUZZ_TENANT_ADMIN, {NULL}},
    {"GetTenant", FUZZ_ADMIN, {"id=acme"}},
    {"CreateEnvironment", FUZZ_ADMIN, {"tenant_id=acme", "name=stage"}},
    {"CreateEnvironment", FUZZ_TENANT_ADMIN, {"tenant_id=globex", "name=dev"}},
    {"ListEnvironments", FUZZ_ADMIN, {"tenant_id=acme", "page_size=1"}},
    {"GetEnvironment", FUZZ_ADMIN, {"tenant_id=acme", "name=prod"}},
    {"GetDataKey", FUZZ_SERVICE, {"tenant_id=acme", "environment=prod"}},
    {"GetDataKey", FUZZ_SERVICE,
        {"tenant_id=acme", "environment=prod", "version=1"}, "v1"},
    {"GenerateKey", FUZZ_ADMIN,
        {"tenant_id=globex", "password=a long passphrase"}},
    {"UploadKey", FUZZ_ADMIN,
        {"tenant_id=globex", "format=1", "file=@openssl-modern.pfx",
            "password=modern-pass"}},
    {"UploadKey", FUZZ_ADMIN,
        {"tenant_id=acme", "format=0", "file=@openssl-cli.byok"}, "byok"},
    {"ListKeys", FUZZ_ADMIN, {"tenant_id=acme"}},
    {"GetKey", FUZZ_ADMIN, {"tenant_id=acme", "key_id=" FUZZ_PH_ACTIVE_KEY}},
    {"ActivateKey", FUZZ_ADMIN,
        {"tenant_id=acme", "key_id=" FUZZ_PH_SPARE_KEY}},
    {"GetJob", FUZZ_ADMIN, {"id=" FUZZ_PH_JOB}},
    {"GetJob", FUZZ_TENANT_ADMIN, {"id=" FUZZ_PH_JOB}},
    {"GetKeyExchangeKey", FUZZ_ADMIN, {"tenant_id=acme"}},
    {"LockTenant", FUZZ_ADMIN,
        {"tenant_id=acme", "format=1", "file=@openssl-modern.pfx",
            "password=modern-pass"}},
    {"UnlockTenant", FUZZ_ADMIN,
        {"tenant_id=acme", "format=1", "file=@openssl-modern.pfx",
            "password=modern-pass"}},
    {"ApplyKey", FUZZ_ADMIN, {"tenant_id=acme", "name=prod"}},
    {"RevertKey", FUZZ_ADMIN, {"tenant_id=acme", "name=dev"}},
    {"UnlockEnvironment", FUZZ_ADMIN, {"tenant_id=acme", "name=dev"}},
    {"ResetEnvironment", FUZZ_ADMIN, {"tenant_id=globex", "name=prod"}},
    {"BackupEnvironment", FUZZ_ADMIN, {"tenant_id=acme", "name=dev"}},
    {"ListBackups", FUZZ_ADMIN, {"tenant_id=acme", "name=prod"}},
    {"RestoreBackup", FUZZ_ADMIN,
        {"tenant_id=acme", "name=prod", "backup_id=" FUZZ_PH_BACKUP}},
    {"CopyEnvironment", FUZZ_ADMIN,
        {"tenant_id=acme", "source=prod", "target=dev"}},
    {"ListEvents", FUZZ_AUDITOR, {"filter.tenant_id=acme", "page_size=5"}},
    {"ListEvents", FUZZ_TENANT_ADMIN, {"page_size=5"}},
    {"TailEvents", FUZZ_AUDITOR, {"from_start=1"}},
    {"TailEvents", FUZZ_TENANT_ADMIN, {"from_start=1", "filter.result=ok"}},
    {"ListCheckpoints", FUZZ_AUDITOR, {"page_size=2"}},
    {"GetAuditKey", FUZZ_AUDITOR, {NULL}},
    {"GetClockState", FUZZ_AUDITOR, {NULL}},
    {"ConfirmClockJump", FUZZ_ADMIN, {NULL}},
};

static const char *const caller_names[FUZZ_CALLERS] = {
    "admin",
    "service",
    "auditor",
    "none",
    "garbage",
    "tenant-admin",
    "other-ca",
    "expired",
    "no-role",
    "from-input",
};

static void fail(const char *what, const char *arg) __attribute__((noreturn));

static void
fail(const char *what, const char *arg)
{
	fprintf(stderr, "request_corpus: %s %s\n", what, arg);
	exit(1);
}

static void *
read_fixture(const char *name, size_t *len)
{
	char path[1024];
	uint8_t *buf;
	long n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", KB_FUZZ_DATA, name);
	if ((f = fopen(path, "rb")) == NULL || fseek(f, 0, SEEK_END) != 0
	    || (n = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0
	    || (buf = malloc((size_t)n)) == NULL
	    || fread(buf, 1, (size_t)n, f) != (size_t)n)
		fail("cannot read", path);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

/* Set "name=value" (or "outer.name=value") in `m`. Strings, bytes, enums,
 * booleans and unsigned integers only: what the seeds need. */
static void
set_field(ProtobufCMessage *m, const char *spec)
{
	char name[64];
	const char *eq = strchr(spec, '='), *dot = strchr(spec, '.'), *v;
	const ProtobufCFieldDescriptor *f;
	void *p;

	if (eq == NULL || (size_t)(eq - spec) >= sizeof(name))
		fail("bad field", spec);
	if (dot != NULL && dot < eq) {
		ProtobufCMessage **sub;

		snprintf(name, sizeof(name), "%.*s", (int)(dot - spec), spec);
		if ((f = protobuf_c_message_descriptor_get_field_by_name(
		         m->descriptor, name))
		        == NULL
		    || f->type != PROTOBUF_C_TYPE_MESSAGE)
			fail("no message field", spec);
		sub = (ProtobufCMessage **)(void *)((char *)m + f->offset);
		if (*sub == NULL) {
			const ProtobufCMessageDescriptor *d = f->descriptor;

			if ((*sub = malloc(d->sizeof_message)) == NULL)
				fail("out of memory", spec);
			protobuf_c_message_init(d, *sub);
		}
		set_field(*sub, dot + 1);
		return;
	}
	snprintf(name, sizeof(name), "%.*s", (int)(eq - spec), spec);
	v = eq + 1;
	if ((f = protobuf_c_message_descriptor_get_field_by_name(
	         m->descriptor, name))
	    == NULL)
		fail("no field", spec);
	p = (char *)m + f->offset;
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING:
		if ((*(char **)p = strdup(v)) == NULL)
			fail("out of memory", spec);
		break;
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData *bd = p;

		if (v[0] != '@')
			fail("bytes come from a file", spec);
		bd->data = read_fixture(v + 1, &bd->len);
		break;
	}
	case PROTOBUF_C_TYPE_ENUM:
	case PROTOBUF_C_TYPE_UINT32:
		*(uint32_t *)p = (uint32_t)strtoul(v, NULL, 10);
		break;
	case PROTOBUF_C_TYPE_UINT64:
		*(uint64_t *)p = strtoull(v, NULL, 10);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		*(protobuf_c_boolean *)p = v[0] == '1';
		break;
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_DOUBLE:
	case PROTOBUF_C_TYPE_MESSAGE: fail("unsupported field type", spec);
	}
}

static void
write_seed(const char *dir, const char *name, const char *variant, uint8_t idx,
    enum fuzz_caller caller, const uint8_t *pre, size_t pre_len,
    const uint8_t *msg, size_t len)
{
	char path[1024];
	uint8_t head[2] = {idx, (uint8_t)caller};
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s-%s%s%s", dir, name,
	    caller_names[caller], variant != NULL ? "-" : "",
	    variant != NULL ? variant : "");
	if ((f = fopen(path, "wb")) == NULL || fwrite(head, 1, 2, f) != 2
	    || (pre_len > 0 && fwrite(pre, 1, pre_len, f) != pre_len)
	    || (len > 0 && fwrite(msg, 1, len, f) != len) || fclose(f) != 0)
		fail("cannot write", path);
}

int
main(int argc, char **argv)
{
	const struct seed *s;
	const struct rpc_method *m;
	struct fuzz_pki pki;
	ProtobufCMessage *msg;
	uint8_t *buf, *pre;
	size_t i, j, len, n;

	if (argc != 2) {
		fprintf(stderr, "usage: request_corpus OUTDIR\n");
		return 2;
	}
	for (s = seeds; s < seeds + sizeof(seeds) / sizeof(seeds[0]); s++) {
		for (m = dispatch_methods; m->path != NULL; m++)
			if (strcmp(m->name, s->method) == 0)
				break;
		if (m->path == NULL)
			fail("no method", s->method);
		if ((msg = malloc(m->req->sizeof_message)) == NULL)
			fail("out of memory", s->method);
		protobuf_c_message_init(m->req, msg);
		for (j = 0; j < 5 && s->fields[j] != NULL; j++)
			set_field(msg, s->fields[j]);
		len = protobuf_c_message_get_packed_size(msg);
		if ((buf = malloc(len + 1)) == NULL)
			fail("out of memory", s->method);
		protobuf_c_message_pack(msg, buf);
		write_seed(argv[1], s->method, s->variant,
		    (uint8_t)(m - dispatch_methods), s->caller, NULL, 0, buf,
		    len);
		free(buf);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
	/* A caller's PEM taken from the input: a certificate of another CA,
	 * preceded by its length, then an empty WhoAmI. */
	if (fuzz_pki_make(&pki) != 0)
		return 1;
	n = strlen(pki.pem[FUZZ_ADMIN]);
	if ((pre = malloc(n + 2)) == NULL)
		fail("out of memory", "");
	pre[0] = (uint8_t)(n >> 8);
	pre[1] = (uint8_t)n;
	memcpy(pre + 2, pki.pem[FUZZ_ADMIN], n);
	for (i = 0; dispatch_methods[i].path != NULL; i++)
		if (strcmp(dispatch_methods[i].name, "WhoAmI") == 0)
			write_seed(argv[1], "WhoAmI", NULL, (uint8_t)i,
			    FUZZ_FROM_INPUT, pre, n + 2, NULL, 0);
	free(pre);
	fuzz_pki_free(&pki);
	return 0;
}
