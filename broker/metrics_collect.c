/* SPDX-License-Identifier: Apache-2.0 */
/* metrics_collect.c: the gauges of one scrape, read from the broker. */
#include "metrics_collect.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/grpc.h>
#include <microhttpd.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "audit.h"
#include "broker.h"
#include "health.h"
#include "kb_hist.h"
#include "metrics.h"
#include "server.h"
#include "store.h"

/* Labels built by a collector: small, escaped into a fixed buffer. */
static const char *
labels(char *buf, size_t len, const char *k1, const char *v1, const char *k2,
    const char *v2, const char *k3, const char *v3)
{
	char *p = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&p, &n);
	const char *k[3] = {k1, k2, k3}, *v[3] = {v1, v2, v3};
	int i;

	buf[0] = '\0';
	if (f == NULL)
		return buf;
	for (i = 0; i < 3 && k[i] != NULL; i++) {
		fprintf(f, "%s%s=\"", i ? "," : "", k[i]);
		metrics_label_escape(f, v[i] != NULL ? v[i] : "");
		fputc('"', f);
	}
	if (fclose(f) == 0)
		snprintf(buf, len, "%s", p);
	free(p);
	return buf;
}

static void
pool(struct server *srv, FILE *out)
{
	struct server_stats st;

	server_stats(srv, &st);
	metrics_head(out, "keybroker_workqueue_depth", "gauge",
	    "Calls waiting for a worker.");
	metrics_value(
	    out, "keybroker_workqueue_depth", NULL, (double)st.queued);
	metrics_head(out, "keybroker_workqueue_capacity", "gauge",
	    "Calls that may wait before new ones are refused "
	    "RESOURCE_EXHAUSTED.");
	metrics_value(
	    out, "keybroker_workqueue_capacity", NULL, (double)st.max_queued);
	metrics_head(out, "keybroker_workers_busy", "gauge",
	    "Workers running a call now.");
	metrics_value(out, "keybroker_workers_busy", NULL, (double)st.busy);
	metrics_head(out, "keybroker_workers", "gauge",
	    "Worker threads (config key workers).");
	metrics_value(out, "keybroker_workers", NULL, (double)st.workers);
	metrics_head(out, "keybroker_streams_open", "gauge",
	    "Server-streaming calls open (TailEvents, CreateBackup).");
	metrics_value(out, "keybroker_streams_open", NULL, (double)st.streams);
}

/* Returns 1 when the database answered. */
static int
jobs(struct store *s, FILE *out)
{
	static const char *const kinds[] = {
	    STORE_JOB_ACTIVATE, STORE_JOB_ROTATE, STORE_JOB_UPGRADE};
	struct store_job *v = NULL;
	char l[300];
	size_t n = 0, i, k, cnt;

	if (store_jobs_running(s, &v, &n) != KB_OK)
		return 0;
	metrics_head(out, "keybroker_jobs_running", "gauge",
	    "Background jobs running, by kind.");
	for (k = 0; k < 3; k++) {
		for (i = cnt = 0; i < n; i++)
			cnt += strcmp(v[i].kind, kinds[k]) == 0;
		metrics_value(out, "keybroker_jobs_running",
		    labels(
		        l, sizeof(l), "kind", kinds[k], NULL, NULL, NULL, NULL),
		    (double)cnt);
	}
	metrics_head(out, "keybroker_job_items_done", "gauge",
	    "Data keys a running job has re-sealed.");
	for (i = 0; i < n; i++)
		metrics_value(out, "keybroker_job_items_done",
		    labels(l, sizeof(l), "job_id", v[i].id, "kind", v[i].kind,
		        "tenant", v[i].tenant_id),
		    (double)v[i].done);
	metrics_head(out, "keybroker_job_items_total", "gauge",
	    "Data keys a running job has to re-seal in all.");
	for (i = 0; i < n; i++)
		metrics_value(out, "keybroker_job_items_total",
		    labels(l, sizeof(l), "job_id", v[i].id, "kind", v[i].kind,
		        "tenant", v[i].tenant_id),
		    (double)v[i].total);
	metrics_head(out, "keybroker_job_last_progress_timestamp_seconds",
	    "gauge", "When a running job last recorded progress (Unix time).");
	for (i = 0; i < n; i++)
		metrics_value(out,
		    "keybroker_job_last_progress_timestamp_seconds",
		    labels(l, sizeof(l), "job_id", v[i].id, "kind", v[i].kind,
		        "tenant", v[i].tenant_id),
		    (double)(v[i].update_time_us / 1000000));
	free(v);
	return 1;
}

static int
counts(struct store *s, FILE *out)
{
	struct store_count *v = NULL;
	char l[200];
	size_t n = 0, i;

	if (store_env_counts(s, &v, &n) != KB_OK)
		return 0;
	metrics_head(out, "keybroker_environments", "gauge",
	    "Environments in the database, by state and encryption mode "
	    "(deleted ones included).");
	for (i = 0; i < n; i++)
		metrics_value(out, "keybroker_environments",
		    labels(l, sizeof(l), "state", v[i].a, "mode", v[i].b, NULL,
		        NULL),
		    (double)v[i].n);
	free(v);
	if (store_key_counts(s, &v, &n) != KB_OK)
		return 0;
	metrics_head(out, "keybroker_keys", "gauge",
	    "Keys in the database, by purpose and state.");
	for (i = 0; i < n; i++)
		metrics_value(out, "keybroker_keys",
		    labels(l, sizeof(l), "purpose", v[i].a, "state", v[i].b,
		        NULL, NULL),
		    (double)v[i].n);
	free(v);
	return 1;
}

/* Every certificate in the PEM file at `path`: its notAfter. */
static void
cert_file(FILE *out, const char *which, const char *path)
{
	BIO *bio;
	X509 *x;
	struct tm tm;
	char subject[256], l[400];
	BIO *mem;
	int len;

	if (path == NULL || (bio = BIO_new_file(path, "r")) == NULL)
		return;
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		subject[0] = '\0';
		if ((mem = BIO_new(BIO_s_mem())) != NULL) {
			X509_NAME_print_ex(
			    mem, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
			len = BIO_read(mem, subject, sizeof(subject) - 1);
			subject[len > 0 ? len : 0] = '\0';
			BIO_free(mem);
		}
		memset(&tm, 0, sizeof(tm));
		if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
			metrics_value(out,
			    "keybroker_certificate_expiry_timestamp_seconds",
			    labels(l, sizeof(l), "certificate", which,
			        "subject", subject, "path", path),
			    (double)timegm(&tm));
		X509_free(x);
	}
	ERR_clear_error();
	BIO_free(bio);
}

static void
info(struct broker *b, FILE *out)
{
	char l[600];
	char *p = NULL;
	size_t n = 0;
	FILE *f;

	metrics_head(out, "keybroker_build_info", "gauge",
	    "The broker's version and the libraries it runs on (always 1).");
	if ((f = open_memstream(&p, &n)) != NULL) {
		fprintf(f, "version=\"%s\",openssl=\"", KB_VERSION);
		metrics_label_escape(f, OpenSSL_version(OPENSSL_VERSION));
		/* The database the broker runs on, as the layer reports it
		 * ("SQLite 3.40.1", "PostgreSQL 15.18"). */
		fprintf(f, "\",grpc=\"%s\",database=\"", grpc_version_string());
		metrics_label_escape(
		    f, b->audit != NULL ? audit_engine_version(b->audit) : "");
		fprintf(f, "\",microhttpd=\"%s\"", MHD_get_version());
		if (fclose(f) == 0) {
			snprintf(l, sizeof(l), "%s", p);
			metrics_value(out, "keybroker_build_info", l, 1);
		}
		free(p);
	}
	metrics_head(out, "keybroker_token_info", "gauge",
	    "The PKCS#11 token the broker uses (always 1).");
	metrics_value(out, "keybroker_token_info",
	    labels(l, sizeof(l), "label", b->token.label, "serial",
	        b->token.serial, "model", b->token.model),
	    1);
}

void
metrics_collect(void *arg, FILE *out)
{
	struct metrics_sources *src = arg;
	struct broker *b = src->b;
	char l[64];
	unsigned k;
	int serving, token_ok, audit_ok, store_ok;

	pool(src->srv, out);
	store_ok = jobs(b->store, out);
	store_ok = counts(b->store, out) && store_ok;

	health_last(b->health, &serving, &token_ok, &audit_ok);
	metrics_head(out, "keybroker_serving", "gauge",
	    "1 when the last health probe (every second) found the broker "
	    "serving.");
	metrics_value(out, "keybroker_serving", NULL, serving);
	metrics_head(out, "keybroker_token_up", "gauge",
	    "1 when the last health probe's token session check passed.");
	metrics_value(out, "keybroker_token_up", NULL, token_ok);
	metrics_head(out, "keybroker_audit_up", "gauge",
	    "1 while the audit log records (its last write succeeded).");
	metrics_value(out, "keybroker_audit_up", NULL, audit_ok);
	metrics_head(out, "keybroker_store_up", "gauge",
	    "1 when this scrape's reads of the database succeeded.");
	metrics_value(out, "keybroker_store_up", NULL, store_ok);

	metrics_head(out, "keybroker_token_operation_duration_seconds",
	    "histogram",
	    "Token operations on keys, waiting for a session included, by "
	    "kind.");
	for (k = 0; k < HSM_OP_KINDS; k++)
		metrics_hist(out, "keybroker_token_operation_duration_seconds",
		    labels(l, sizeof(l), "op",
		        hsm_op_kind_name((enum hsm_op_kind)k), NULL, NULL, NULL,
		        NULL),
		    hsm_op_hist(b->hsm, (enum hsm_op_kind)k));
	metrics_head(out, "keybroker_token_retries_total", "counter",
	    "Token calls (object creation, login) that failed in a way that "
	    "may pass (CKR_GENERAL_ERROR from SoftHSMv2 while another process "
	    "wrote the token) and were tried again, and objects found only "
	    "by a second search.");
	metrics_value(
	    out, "keybroker_token_retries_total", NULL, hsm_retries(b->hsm));
	metrics_head(out, "keybroker_audit_commit_duration_seconds",
	    "histogram",
	    "Audit group commits (one transaction and fsync for many "
	    "events).");
	metrics_hist(out, "keybroker_audit_commit_duration_seconds", NULL,
	    audit_commit_hist(b->audit));

	metrics_head(out, "keybroker_certificate_expiry_timestamp_seconds",
	    "gauge",
	    "notAfter of the broker's server certificate (tls_cert) and of "
	    "each CA in client_ca (Unix time).");
	cert_file(out, "server", b->cfg->tls_cert);
	cert_file(out, "client_ca", b->cfg->client_ca);
	info(b, out);
}
