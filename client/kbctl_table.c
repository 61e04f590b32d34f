/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_table.c: kbctl's command table: every group and subcommand, its
 * arguments, flags and --help text (the documentation admins read). */
#include "kbctl.h"

/* clang-format off */
#define ALL_FLAG \
	{ "--all", NULL, "follow the pages to the end" }

#define PAGE_FLAGS \
	{ "--page-size", "N", "items per call (1..1000; default: the broker's, 100)" }, \
	{ "--page-token", "TOKEN", "start at this page (from a previous listing)" }, \
	ALL_FLAG

#define PAGE_TEXT \
	"Prints the first page and says when more follow, unless --all."

#define PASSWORD_FLAG(what) \
	{ "--password-file", "FILE", "the " what " password: first line of FILE (mode 0600)" }

#define FORMAT_FLAG \
	{ "--format", "pfx|byok", "the key file's format (default: from its content)" }

#define YES_FLAG \
	{ "--yes", NULL, "go ahead without asking (required without a terminal)" }

#define CONFIRM_TEXT(word) \
	"Confirmation: on a terminal kbctl explains what will happen and asks\n" \
	"you to type " word " (anything else stops it: exit 1).\n" \
	"Without a terminal it refuses (exit 2) unless --yes is given."

#define PASSWORD_TEXT \
	"Password: from --password-file (the first line of the file; a file\n" \
	"that group or others may read or write is refused), or asked on the\n" \
	"terminal without echo; never on the command line. Without a terminal\n" \
	"and without --password-file, kbctl stops (exit 2)."

#define KEYFILE_TEXT \
	"Key file: its format comes from its content (a binary PKCS#12 .pfx\n" \
	"starts with byte 0x30, a .byok is JSON) unless --format says it. A\n" \
	".pfx needs its password, a .byok none. At most 64 KiB; the bytes read\n" \
	"are wiped from memory after sending."

#define KEY_FLAG_TEXT \
	"Here --key names the tenant key file; the client key comes from\n" \
	"KB_KEY, or from --key given before the command words."

#define AUDIT_FILTER_FLAGS \
	{ "--since", "TIME", "events at or after TIME: RFC 3339 or -15m, -2h, -7d" }, \
	{ "--until", "TIME", "events before TIME (the same forms)" }, \
	{ "--tenant", "TENANT", "only events naming this tenant" }, \
	{ "--env", "ENV", "only events naming this environment" }, \
	{ "--method", "METHOD", "only this method: GetDataKey, CreateTenant, broker.start, ..." }, \
	{ "--actor", "NAME", "only this actor: a certificate CN, or keybroker" }, \
	{ "--result", "ok|denied|error|started|requested", "only events with this result" }, \
	{ "--request", "ID", "only events of this call or approval request (r-...)" }

#define AUDIT_FILTER_TEXT \
	"Filters (all must match): --since and --until take a time in RFC 3339\n" \
	"(2026-01-02T03:04:05Z, 2026-01-02) or relative to now (-30s, -15m, -2h,\n" \
	"-7d); --tenant, --env, --method, --actor, --result and --request compare\n" \
	"exactly (--request r-... tells an approval request's whole story).\n" \
	"An admin limited to some tenants sees only their events; auditors and\n" \
	"other admins see all; services may not read the log."

#define AUDIT_EVENT_TEXT \
	"An event: seq (its place in the log), time (UTC, microseconds), actor\n" \
	"(certificate CN; keybroker for the broker itself) and role (admin,\n" \
	"service, auditor, system, none), peer (the caller's address), method,\n" \
	"tenant_id, environment, key_id, result (ok, denied, error; started\n" \
	"before a state change, whose outcome follows under the same\n" \
	"request_id), reason (why, for denied and error), request_id, and hash\n" \
	"(hex SHA-256 chaining it to the event before)."

/* The command table: one row per subcommand (STYLE.md: the request path as
 * a table). Groups are listed in the order they first appear. */
const struct kbctl_cmd kbctl_cmds[] = {
	{ NULL, "health", "", 0, 0,
	  "Check that the broker is serving",
	  "Calls grpc.health.v1.Health/Check. Prints SERVING and exits 0, or\n"
	  "prints the status and exits 1.",
	  { { NULL } }, kbctl_cmd_health },
	{ NULL, "whoami", "", 0, 0,
	  "Show who the broker thinks you are",
	  "Role and name from your certificate, the tenants or environments it\n"
	  "may use, its expiry, and the broker's version, token and wrapping.",
	  { { NULL } }, kbctl_cmd_whoami },

	{ "tenants", "create", "ID", 1, 1,
	  "Create a tenant",
	  "ID is a slug: a-z, 0-9 and '-', 1 to 63 characters.",
	  { { "--name", "DISPLAY_NAME", "display name, free text up to 200 bytes" } },
	  kbctl_cmd_tenants_create },
	{ "tenants", "list", "", 0, 0,
	  "List tenants",
	  PAGE_TEXT,
	  { PAGE_FLAGS }, kbctl_cmd_tenants_list },
	{ "tenants", "show", "ID", 1, 1,
	  "Show one tenant",
	  "Its state (active or locked), environments (and how many are locked),\n"
	  "active key, last activation, last key change, and the time of and key\n"
	  "for a lock.",
	  { { NULL } }, kbctl_cmd_tenants_show },
	{ "tenants", "lock", "TENANT", 1, 1,
	  "Lock a tenant with its active key (destructive)",
	  "The key file proves the tenant's active key (fingerprints must match):\n"
	  "the .pfx 'keys generate' wrote (or the .pfx or .byok that was uploaded).\n"
	  "Then the broker:\n"
	  "  - locks every customer-managed environment of the tenant: its data\n"
	  "    key is refused (FAILED_PRECONDITION) until the environment is\n"
	  "    unlocked;\n"
	  "  - marks the active key 'locked' and destroys every active and\n"
	  "    available key of the tenant in the token (fingerprints are kept);\n"
	  "  - deletes, for good, locked environments not unlocked within 28 days.\n"
	  "Refused within 72 hours of the last key change or activation.\n\n"
	  "To come back: 'kbctl tenants unlock' with the same key file (from 1\n"
	  "hour after the lock), then 'kbctl envs unlock' for each environment.\n"
	  "\n" CONFIRM_TEXT("the tenant id") "\n\n"
	  KEYFILE_TEXT "\n\n" PASSWORD_TEXT "\n\n" KEY_FLAG_TEXT "\n\n"
	  "Prints the tenant.",
	  { { "--key", "FILE", "the tenant's active key: its .pfx or .byok", KBCTL_REQUIRED },
	    PASSWORD_FLAG(".pfx"), FORMAT_FLAG, YES_FLAG },
	  kbctl_cmd_tenants_lock },
	{ "tenants", "unlock", "TENANT", 1, 1,
	  "Unlock a tenant with the key that locked it",
	  "The key file must be the key that locked the tenant (fingerprints must\n"
	  "match); refused within 1 hour of the lock. The key goes back into the\n"
	  "token and becomes the active key again. The environments stay locked:\n"
	  "unlock each with 'kbctl envs unlock TENANT ENV' (same data key as\n"
	  "before the lock).\n\n"
	  KEYFILE_TEXT "\n\n" PASSWORD_TEXT "\n\n" KEY_FLAG_TEXT "\n\n"
	  "Prints the tenant.",
	  { { "--key", "FILE", "the key that locked the tenant: .pfx or .byok", KBCTL_REQUIRED },
	    PASSWORD_FLAG(".pfx"), FORMAT_FLAG },
	  kbctl_cmd_tenants_unlock },

	{ "keys", "list", "TENANT", 1, 1,
	  "List a tenant's keys",
	  "One row per key: id, origin (generated, pfx, byok), state (available,\n"
	  "installing, active, locked, deleted, pending_deletion, retiring,\n"
	  "retired, pending_approval), the start of its\n"
	  "fingerprint (the hex SHA-256 of its public key, whole in 'keys show' and\n"
	  "--json), and when it was created and activated. --json prints\n"
	  "{\"keys\": [...]}. What each key protects: 'keys show TENANT KEY'.",
	  { { NULL } }, kbctl_cmd_keys_list },
	{ "keys", "show", "[TENANT] KEY", 1, 2,
	  "Show one key and what it protects (its census)",
	  "Its origin, state, fingerprint (hex SHA-256 of the DER public key), size,\n"
	  "and the times it was created, changed, activated, locked and deleted\n"
	  "(\"-\" or null: never). Then its census, counted exactly in the database:\n"
	  "the data key versions it seals now (a tenant key through its KEKs, each\n"
	  "listed), the backups whose version is one of them, and which environments\n"
	  "(enabled, locked), one row each. KEY may be a tenant key (k-...), one of\n"
	  "the tenant's KEKs (kek-...), or, without TENANT, a platform key (kb-pk-...,\n"
	  "platform-wide admins). --json prints the key with a \"census\" object:\n"
	  "{dek_versions, backups, environments, environments_enabled,\n"
	  "environments_locked, dek_versions_locked, tenants, via [...],\n"
	  "dependents [...], dependents_truncated}.",
	  { { "--envs", "N", "list up to N environments (default 100, at most 10000)" } },
	  kbctl_cmd_keys_show },
	{ "keys", "generate", "TENANT", 1, 1,
	  "Generate a new RSA-2048 key and save it as a .pfx",
	  "The broker makes the key in its token and returns it once, as a PKCS#12\n"
	  "file (AES-256, PBKDF2, SHA-256 MAC) protected by the password you give.\n"
	  "kbctl writes it to --out with mode 0600 (an existing file is refused\n"
	  "unless --force), then prints the key. That file and its password are\n"
	  "what locking and unlocking the tenant need: the broker cannot show the\n"
	  ".pfx again. The new key is 'available': activate it with 'keys activate'.\n"
	  "Refused while the tenant has locked environments. With a quorum\n"
	  "covering GenerateKey and a key active, the key is 'pending_approval'\n"
	  "(the .pfx is saved all the same) and kbctl prints its request_id: it\n"
	  "cannot be activated until approved; a deny or an expiry destroys it.\n\n"
	  "Password: from --password-file (the first line of the file; a file\n"
	  "that group or others may read or write is refused), or asked twice on\n"
	  "the terminal without echo; never on the command line. Without a\n"
	  "terminal and without --password-file, kbctl stops (exit 2).\n\n"
	  "--json prints {\"key\": {...}, \"pfx_file\": PATH} (and \"request_id\"\n"
	  "when it waits for approval); the warning goes to stderr then.",
	  { { "--out", "FILE.pfx", "where to write the .pfx (mode 0600)", KBCTL_REQUIRED },
	    PASSWORD_FLAG("new .pfx"),
	    { "--force", NULL, "replace FILE.pfx if it exists" } },
	  kbctl_cmd_keys_generate },
	{ "keys", "upload", "TENANT FILE", 2, 2,
	  "Upload a key: a .pfx (with its password) or a .byok",
	  "FILE is a PKCS#12 .pfx holding one RSA-2048 private key (and optionally\n"
	  "its certificate), or a .byok made for this tenant's key-exchange key\n"
	  "('kbctl byok kek', 'kbctl byok wrap'). The key goes into the token and\n"
	  "is 'available' ('pending_approval' with a request_id, as for 'keys\n"
	  "generate', under a quorum). Refused while the tenant has locked\n"
	  "environments.\n\n"
	  KEYFILE_TEXT "\n\n" PASSWORD_TEXT "\n\n"
	  "Prints the key.",
	  { PASSWORD_FLAG(".pfx"), FORMAT_FLAG },
	  kbctl_cmd_keys_upload },
	{ "keys", "activate", "TENANT KEY", 2, 2,
	  "Make a key the tenant's active key",
	  "available -> installing -> active; the previous active key becomes\n"
	  "available. A background job re-wraps every customer-managed environment\n"
	  "of the tenant under the new key while data keys keep being served.\n"
	  "Refused within 24 hours of the previous activation and while the tenant\n"
	  "has locked environments.\n\n"
	  "Prints the job. With --wait, follows it until it is done (exit 0) or has\n"
	  "failed (exit 1, with its error): a progress bar on a terminal, a line\n"
	  "every 5 seconds otherwise. Ctrl-C stops waiting (exit 130), not the job:\n"
	  "follow it with 'kbctl jobs show JOB_ID'.",
	  { { "--wait", NULL, "wait for the re-wrap job to finish" } },
	  kbctl_cmd_keys_activate },

	{ "jobs", "show", "JOB_ID", 1, 1,
	  "Show a background job",
	  "Its kind (activate, rotate-platform, upgrade-v2, retire), tenant, keys, state\n"
	  "(running, done, failed), progress (done of total data keys) and error.",
	  { { NULL } }, kbctl_cmd_jobs_show },

	{ "platform", "rotate-key", "", 0, 0,
	  "Rotate the platform key in place (platform-wide admins)",
	  "Makes a new platform key in the token; a background job re-seals every\n"
	  "platform-managed data key under it while data keys keep being served;\n"
	  "when nothing refers to the old key any more it is destroyed, so a reset\n"
	  "or deleted environment's data key, or a platform-sealed row in an old\n"
	  "copy of the database, can no longer be opened. The broker also does\n"
	  "this every platform_key_rotation_days (default 30). Prints the job;\n"
	  "--wait follows it as 'keys activate --wait' does.",
	  { { "--wait", NULL, "wait for the re-seal job to finish" } },
	  kbctl_cmd_platform_rotate_key },

	{ "clock", "show", "", 0, 0,
	  "Show the broker's policy time and whether the sweeper is paused",
	  "Every time rule (cooldowns, the 28-day deletion) reads the broker's\n"
	  "policy time: its wall clock, never going backward. The broker keeps a\n"
	  "high-water mark of it in its database (at start-up, every 10 s, and\n"
	  "before every lock, unlock, reset and deletion), so a clock set back,\n"
	  "even across a restart, cannot take time back: policy time waits until\n"
	  "the wall clock catches up (shown here, logged and audited once as\n"
	  "clock.backward). A wall clock more than clock_jump_limit_s (default\n"
	  "3600) ahead of the mark, because it jumped or the broker was stopped\n"
	  "that long, is audited as clock.jump and pauses the sweeper's\n"
	  "deletions until a platform-wide admin runs 'kbctl clock confirm';\n"
	  "other time rules use the new time at once.\n\n"
	  "Prints policy_time, wall_time, mark_time, jump_limit_s, sweeper\n"
	  "(deleting, or PAUSED with the jump) and last_confirmed. --json prints\n"
	  "{\"policy_time\", \"wall_time\", \"mark_time\" (each also *_us),\n"
	  "\"jump_limit_s\", \"sweeper_paused\", \"jump_from_time\",\n"
	  "\"jump_to_time\", \"confirm_time\", \"confirmed_by\"}. Admins and\n"
	  "auditors.",
	  { { NULL } }, kbctl_cmd_clock_show },
	{ "clock", "confirm", "", 0, 0,
	  "Confirm a forward clock jump: the sweeper deletes again",
	  "Says the broker's clock is right after a forward jump that paused the\n"
	  "sweeper (see 'kbctl clock show'): from then on the sweeper deletes,\n"
	  "for good, every locked environment locked more than 28 days before\n"
	  "that clock. An audit event (clock.jump.confirm) names you. Check the\n"
	  "clock first (NTP, the host's time): if it is wrong, fix it instead;\n"
	  "the sweeper stays paused meanwhile. Platform-wide admins only\n"
	  "(kb://platform); refused (exit 1) when no jump waits.\n\n"
	  CONFIRM_TEXT("confirm") "\n\n"
	  "Prints the clock as 'clock show' does.",
	  { YES_FLAG }, kbctl_cmd_clock_confirm },

	{ "quorum", "set", "[TENANT]", 0, 1,
	  "Set a tenant's (or the platform default) quorum policy",
	  "With a quorum in force, LockTenant, ActivateKey, ResetEnvironment,\n"
	  "RestoreBackup, CopyEnvironment, RotatePlatformKey and every quorum\n"
	  "change do not act: they make an approval request that M approvers\n"
	  "other than the requester must approve ('kbctl approvals'); while a\n"
	  "key is active, GenerateKey and UploadKey make their key\n"
	  "pending_approval. --operations limits it to the methods listed\n"
	  "(default: all of them, those added later too); SetQuorum is always\n"
	  "covered. A tenant\n"
	  "without a policy of its own follows the platform default (--platform).\n"
	  "--approvals 0 turns it off. While a quorum is in force, changing it\n"
	  "(lowering it or turning it off included) is itself a request.\n"
	  "--approvers lists certificate CNs (at least M + 1, since the\n"
	  "requester never counts); without it every admin whose certificate\n"
	  "reaches the tenant may approve.",
	  { { "--approvals", "M", "approvals needed (0 = off, at most 16)",
	      KBCTL_REQUIRED },
	    { "--approvers", "CN,CN,...", "who may approve (certificate CNs)" },
	    { "--operations", "NAME,...",
	      "the methods it covers (default: all)" },
	    { "--platform", NULL, "the platform default instead of a tenant" } },
	  kbctl_cmd_quorum_set },
	{ "quorum", "show", "[TENANT]", 0, 1,
	  "Show the quorum policy governing a tenant (or the platform's)",
	  "Prints scope, quorum (off or M approvals), approvers, operations\n"
	  "(the methods it covers; 'all' when not limited), from (the\n"
	  "platform default when the tenant has none of its own), updated_by\n"
	  "and updated. --json prints {\"tenant_id\", \"platform\", \"approvals\",\n"
	  "\"approvers\", \"operations\", \"all_operations\", \"inherited\",\n"
	  "\"updated_by\", \"update_time\"}.",
	  { { "--platform", NULL, "the platform default" } },
	  kbctl_cmd_quorum_show },
	{ "approvals", "list", "", 0, 0,
	  "List approval requests (pending ones unless --all)",
	  "A tenant-limited admin must name its tenant with --tenant.",
	  { { "--tenant", "TENANT", "only this tenant's requests" },
	    { "--all", NULL, "also executed, failed, denied and expired ones" } },
	  kbctl_cmd_approvals_list },
	{ "approvals", "show", "ID", 1, 1,
	  "Show an approval request and its decisions",
	  "Prints request_id, state (pending, executing, executed, failed,\n"
	  "denied, expired), method, tenant_id, environment, arguments (never a\n"
	  "secret: a lock keeps only its proof's fingerprint), requester,\n"
	  "approvals (counted of needed), approvers, each decision, key_id (the\n"
	  "key a GenerateKey/UploadKey holds pending_approval), created,\n"
	  "expires (approval_ttl_s) and result. --json prints one document with\n"
	  "a top-level \"request_id\".",
	  { { NULL } }, kbctl_cmd_approvals_show },
	{ "approvals", "approve", "ID", 1, 1,
	  "Approve a request; the M-th approval runs it",
	  "The requester never counts; each approver (certificate CN) counts\n"
	  "once; an expired request cannot be approved. The M-th approval runs\n"
	  "the operation with every policy rule checked at that moment; a\n"
	  "request whose target changed since it was made fails with the\n"
	  "reason. Prints the request afterwards (its state and result).",
	  { { NULL } }, kbctl_cmd_approvals_approve },
	{ "approvals", "deny", "ID", 1, 1,
	  "Deny a request: one deny cancels it",
	  NULL, { { NULL } }, kbctl_cmd_approvals_deny },
	{ "approvals", "watch", "", 0, 0,
	  "Follow new approval requests live (until Ctrl-C)",
	  "Prints a line for each new request as it is made (--json: one\n"
	  "compact document per line), through the audit stream. A broken\n"
	  "stream is opened again (on the next broker, with several --addr)\n"
	  "after the last event seen.",
	  { { "--tenant", "TENANT", "only this tenant's requests" } },
	  kbctl_cmd_approvals_watch },

	{ NULL, "verify", "[TENANT]", 0, 1,
	  "Check every stored data key in the token, revealing none",
	  "Opens each sealed data key of TENANT (or of every tenant: platform-wide\n"
	  "admins) inside the token and reports every one that fails, by tenant,\n"
	  "environment and version, with why: moved_or_edited (its integrity check\n"
	  "failed: moved from another row, edited, or made outside the token),\n"
	  "key_missing (its key is not in the token), damaged (not a sealed key),\n"
	  "legacy (still in the pre-v2 envelope), unrecoverable (marked by\n"
	  "repair). Locked environments are skipped. A progress bar on a\n"
	  "terminal. Exit 0 when every key is sound, 1 when any fails. --json\n"
	  "prints {\"checked\", \"total\", \"failures\": [...]}.",
	  { { NULL } }, kbctl_cmd_verify },

	{ NULL, "repair", "[TENANT]", 0, 1,
	  "Repair what verify finds, mark the rest unrecoverable",
	  "Runs verify, then repairs each failing data key that has a healthy\n"
	  "source: a KEK whose token object is gone is unwrapped again from its\n"
	  "stored copy, and a blob that was moved to another row is put back. Every\n"
	  "other failing key is marked unrecoverable: the service gets DATA_LOSS\n"
	  "naming it, not a wrong key. Asks for confirmation on a terminal; --yes\n"
	  "for scripts. Exit 0 when nothing is left unrecoverable. --json prints\n"
	  "{\"checked\", \"repaired\": [...], \"unrecoverable\": [...]}.",
	  { { "--yes", NULL, "do not ask for confirmation" } },
	  kbctl_cmd_repair },

	{ "byok", "kek", "TENANT", 1, 1,
	  "Show the broker's key-exchange key (KEK) for .byok uploads",
	  "Prints the KEK's id (kid, for the .byok header), the wrapping the\n"
	  "broker expects (RSA-OAEP-SHA1) and the public key in PEM, or writes the\n"
	  "PEM to --out. Give both to an HSM vendor's BYOK tool, or to\n"
	  "'kbctl byok wrap'. --json prints {\"kid\", \"public_key_pem\",\n"
	  "\"wrap_algorithm\"} (and \"public_key_file\" with --out); 'byok wrap --kek'\n"
	  "takes that JSON too.",
	  { { "--out", "FILE.pem", "write the public key here (an existing file is refused)" },
	    { "--force", NULL, "replace FILE.pem if it exists" } },
	  kbctl_cmd_byok_kek },

	{ "byok", "rotate-kek", "TENANT", 1, 1,
	  "Replace the tenant's key-exchange key with a new one",
	  "Makes a new key-exchange key in the token and destroys the previous one:\n"
	  "a .byok wrapped for the old kid is refused from then on, naming the new\n"
	  "one. Prints the new key as 'byok kek' does (same flags and --json).",
	  { { "--out", "FILE.pem", "write the public key here (an existing file is refused)" },
	    { "--force", NULL, "replace FILE.pem if it exists" } },
	  kbctl_cmd_byok_rotate_kek },
	{ "byok", "wrap", "", 0, 0,
	  "Wrap a PEM private key into a .byok file, offline",
	  "Does what an HSM vendor's BYOK tool does, with OpenSSL and without the\n"
	  "broker (no TLS flags needed): a random AES-256 transfer key is encrypted\n"
	  "with RSA-OAEP (SHA-1, MGF1-SHA-1) under the KEK, and the key's PKCS#8 DER\n"
	  "is wrapped with AES key wrap with padding (RFC 5649) under it. The .byok\n"
	  "(Azure Key Vault format, enc CKM_RSA_AES_KEY_WRAP) is written with mode\n"
	  "0600; the transfer key and the plaintext key are wiped from memory.\n\n"
	  "--key must be an RSA-2048 private key (PEM or DER; an encrypted PEM\n"
	  "needs its password, from --password-file or the terminal). --kek takes\n"
	  "the PEM from 'kbctl byok kek --out' (then --kid is needed) or the JSON\n"
	  "of 'kbctl byok kek --json' (which carries the kid).\n\n"
	  "Prints the file, the kid and the key's fingerprint (as 'keys show' will\n"
	  "show it). Then: 'kbctl keys upload TENANT FILE.byok'.",
	  { { "--kek", "KEK", "the key-exchange key: PEM, or 'byok kek --json' output", KBCTL_REQUIRED },
	    { "--kid", "KID", "the KEK's id (default: from a JSON --kek)" },
	    { "--key", "PRIVATE.pem", "the RSA-2048 private key to wrap", KBCTL_REQUIRED },
	    { "--out", "FILE.byok", "where to write the .byok (mode 0600)", KBCTL_REQUIRED },
	    PASSWORD_FLAG("encrypted PEM's"),
	    { "--force", NULL, "replace FILE.byok if it exists" } },
	  kbctl_cmd_byok_wrap, KBCTL_LOCAL },

	{ "envs", "create", "TENANT NAME", 2, 2,
	  "Create an environment (platform-encrypted, with a new data key)",
	  "NAME is a slug: a-z, 0-9 and '-', 1 to 63 characters.",
	  { { NULL } }, kbctl_cmd_envs_create },
	{ "envs", "list", "TENANT", 1, 1,
	  "List a tenant's environments",
	  PAGE_TEXT,
	  { PAGE_FLAGS }, kbctl_cmd_envs_list },
	{ "envs", "show", "TENANT NAME", 2, 2,
	  "Show one environment",
	  "Its encryption mode (platform or customer), state (enabled, locked,\n"
	  "deleted), the key that wraps its data key now, the DEK version, and when\n"
	  "it was created, changed and locked.",
	  { { NULL } }, kbctl_cmd_envs_show },
	{ "envs", "apply-key", "TENANT ENV", 2, 2,
	  "Encrypt an environment with the tenant's active key",
	  "platform -> customer: the data key (unchanged) is re-wrapped under the\n"
	  "tenant's active key. Needs an active key. Prints the environment.",
	  { { NULL } }, kbctl_cmd_envs_apply_key },
	{ "envs", "revert-key", "TENANT ENV", 2, 2,
	  "Return an environment to the platform key",
	  "customer -> platform: the data key (unchanged) is re-wrapped under the\n"
	  "broker's platform key. Prints the environment.",
	  { { NULL } }, kbctl_cmd_envs_revert_key },
	{ "envs", "unlock", "TENANT ENV", 2, 2,
	  "Unlock an environment after its tenant was unlocked",
	  "After 'kbctl tenants unlock', brings one locked environment back with\n"
	  "the same data key as before the lock. Prints the environment.",
	  { { NULL } }, kbctl_cmd_envs_unlock },
	{ "envs", "reset", "TENANT ENV", 2, 2,
	  "Destroy an environment's data key and start again (destructive)",
	  "The data key of the environment and those of all its backups are\n"
	  "destroyed; the environment goes back to the platform key with a new data\n"
	  "key. Data encrypted under the old keys cannot be read again.\n\n"
	  CONFIRM_TEXT("the environment name") "\n\n"
	  "Prints the environment.",
	  { YES_FLAG }, kbctl_cmd_envs_reset },
	{ "envs", "backup", "TENANT ENV", 2, 2,
	  "Back up an environment's data key",
	  "Records the data key with the environment's encryption state (mode and\n"
	  "key). Prints the backup, its id first.",
	  { { NULL } }, kbctl_cmd_envs_backup },
	{ "envs", "backups", "TENANT ENV", 2, 2,
	  "List an environment's backups",
	  "One row per backup: id, DEK version, encryption mode and key then, and\n"
	  "when it was made. --json prints {\"backups\": [...]}.",
	  { { NULL } }, kbctl_cmd_envs_backups },
	{ "envs", "restore", "TENANT ENV BACKUP_ID", 3, 3,
	  "Restore a backup into an environment (overwrites its data key)",
	  "The environment gets the backup's data key. Only where the backup's\n"
	  "encryption state (mode and key) matches the environment's current one.\n\n"
	  CONFIRM_TEXT("the environment name") "\n\n"
	  "Prints the environment.",
	  { YES_FLAG }, kbctl_cmd_envs_restore },
	{ "envs", "copy", "TENANT SOURCE TARGET", 3, 3,
	  "Copy an environment onto another (overwrites the target)",
	  "TARGET gets SOURCE's data key; what TARGET's own data key protected\n"
	  "cannot be read again. Only when both are encrypted with the same\n"
	  "customer key.\n\n"
	  CONFIRM_TEXT("the target environment name") "\n\n"
	  "Prints the target environment.",
	  { YES_FLAG }, kbctl_cmd_envs_copy },

	{ "datakey", "get", "TENANT ENV", 2, 2,
	  "Fetch an environment's data key (needs a service certificate)",
	  "Prints the data key (DEK) in base64 with its version and the key\n"
	  "that wraps it. The DEK is secret: keep it out of logs and history.\n"
	  "--version N fetches an older version (after a rotation); the default\n"
	  "(or 0) is the current one.",
	  { { "--version", "N", "the DEK version (default or 0: the current one)" } },
	  kbctl_cmd_datakey_get },

	{ "audit", "list", "", 0, 0,
	  "List audit events, oldest first",
	  AUDIT_EVENT_TEXT "\n\n" AUDIT_FILTER_TEXT "\n\n"
	  "Prints a page (--page-size, default 100) of events with seq after\n"
	  "--after (default 0: from the first) as a table: SEQ, TIME, ACTOR, ROLE,\n"
	  "METHOD, TENANT, ENV, KEY, RESULT and REASON (cut to 60 characters), and\n"
	  "says on stderr when more follow; --all follows the pages to the end.\n"
	  "--json prints {\"events\": [{\"seq\", \"time\", \"time_us\", \"actor\", \"role\",\n"
	  "\"peer\", \"method\", \"tenant_id\", \"environment\", \"key_id\", \"result\",\n"
	  "\"reason\", \"request_id\", \"hash\"}, ...], \"next_after_seq\": N, \"more\":\n"
	  "BOOL}: pass next_after_seq as --after for the next page.",
	  { AUDIT_FILTER_FLAGS,
	    { "--after", "SEQ", "events after this sequence number (default 0)" },
	    { "--page-size", "N", "events per call (1..1000; default: the broker's, 100)" },
	    ALL_FLAG },
	  kbctl_cmd_audit_list },
	{ "audit", "tail", "", 0, 0,
	  "Print the last events, or follow new ones live (-f)",
	  "Without -f: prints the last N events (-n, default 20) that match the\n"
	  "filters, oldest first, and exits.\n\n"
	  "With -f: follows the log live (TailEvents, a server stream), one line\n"
	  "per event, stdout flushed after each. It starts after the newest event\n"
	  "(with -n N: prints the last N first), after --after SEQ, or at the\n"
	  "first event with --from-start. Its first call must succeed (an\n"
	  "unreachable broker, a refusal or a bad filter: exit 1). Then, if the\n"
	  "stream breaks (broker restart, network), kbctl says so on stderr and\n"
	  "reconnects, waiting 0.25 s and doubling up to 5 s, and resumes after\n"
	  "the last event it printed: no gap, no duplicate. With several --addr\n"
	  "the first reconnection goes at once to the next broker that answers.\n"
	  "A refusal ends it\n"
	  "(exit 1). Ctrl-C or SIGTERM ends it cleanly (exit 0).\n\n"
	  "--state-file FILE: the sequence number to resume after is read from\n"
	  "FILE when it exists (it then wins over --after, --from-start and -n,\n"
	  "which only set where the first run starts) and written to FILE after\n"
	  "each event printed (FILE.tmp, then renamed), so a tail -f that is\n"
	  "killed and started again with the same FILE goes on exactly where it\n"
	  "stopped.\n"
	  "(Killed in the instant between printing an event and recording it,\n"
	  "it prints that one event again: it never skips one.)\n\n"
	  "A line: SEQ TIME ACTOR ROLE METHOD TENANT ENV KEY RESULT [REASON], \"-\"\n"
	  "for an empty field. --json prints one JSON object per line instead,\n"
	  "with the fields of 'audit list --json' (hash included).\n\n"
	  AUDIT_FILTER_TEXT,
	  { { "--follow", NULL, "follow new events live, resuming after disconnects", 0, "-f" },
	    { "--lines", "N", "print the last N events (default 20; with -f: none)", 0, "-n" },
	    { "--after", "SEQ", "with -f: start after this sequence number" },
	    { "--from-start", NULL, "with -f: start at the first event" },
	    { "--state-file", "FILE", "with -f: resume after the seq in FILE; keep it up to date" },
	    AUDIT_FILTER_FLAGS },
	  kbctl_cmd_audit_tail },
	{ "audit", "export", "", 0, 0,
	  "Export the whole log, with its checkpoints and public key",
	  "Writes JSON Lines to --out (mode 0600, through a temporary file renamed\n"
	  "at the end; an existing file is refused unless --force):\n"
	  "  line 1: {\"type\": \"header\", \"format\": \"keybroker-audit-export\",\n"
	  "          \"version\": 1, \"exported_at\", \"exported_at_us\", \"head_seq\",\n"
	  "          \"audit_key\": {\"key_id\", \"algorithm\", \"fingerprint\",\n"
	  "          \"public_key_pem\"}}\n"
	  "  then every event {\"type\": \"event\", ...the fields of 'audit list\n"
	  "  --json'...} and every checkpoint {\"type\": \"checkpoint\", \"seq\",\n"
	  "  \"time\", \"time_us\", \"head_hash\" (hex), \"prev_signature\" (base64),\n"
	  "  \"signature\" (base64), \"key_id\"} in log order: a checkpoint right\n"
	  "  after the event it covers (or where that event would be).\n"
	  "The export ends at the newest event when it starts (or the newest\n"
	  "checkpoint, if its events are gone): head_seq. Events and checkpoints\n"
	  "written meanwhile are left for the next one. kbctl warns when sequence\n"
	  "numbers are missing (removed events, or events this certificate may\n"
	  "not read: export as an auditor). Prints how many events and\n"
	  "checkpoints it wrote; --json prints {\"file\", \"events\", \"first_seq\",\n"
	  "\"last_seq\", \"checkpoints\", \"head_seq\", \"fingerprint\"}. Then:\n"
	  "'kbctl audit verify FILE', anywhere, without the broker.",
	  { { "--out", "FILE", "where to write the export (mode 0600)", KBCTL_REQUIRED },
	    { "--force", NULL, "replace FILE if it exists" } },
	  kbctl_cmd_audit_export },
	{ "audit", "verify", "[FILE]", 0, 1,
	  "Verify an export offline (or the broker's log with --online)",
	  "Checks every event's hash chain (each hash = SHA-256 of the previous\n"
	  "hash and the event), that no sequence number is missing, every\n"
	  "checkpoint's signature with the audit public key (RSASSA-PKCS1-v1_5,\n"
	  "SHA-256) and its chaining to the one before, and that each checkpoint\n"
	  "signs the hash of the event it covers. Prints\n"
	  "  verified: events 1..N (K checkpoints; signed through C); audit key\n"
	  "  fingerprint F\n"
	  "and exits 0 (warning on stderr about events after the last checkpoint,\n"
	  "which no signature covers yet), or\n"
	  "  FAILED at seq S: REASON   (the first sequence number that fails)\n"
	  "  FAILED at line L: REASON  (a malformed line of the file)\n"
	  "and exits 1. Events removed after a checkpoint signed them, the newest\n"
	  "included, are caught by that checkpoint (the broker never reuses their\n"
	  "numbers). Events no checkpoint covers yet, or removed together with the\n"
	  "checkpoints after them, can only be seen missing by comparing with an\n"
	  "earlier export (its events must reappear, same hashes): keep them.\n\n"
	  "FILE ('-' for stdin) is an 'audit export'; this needs no broker and no\n"
	  "certificates. --online verifies the broker's log through the API\n"
	  "instead (as an auditor: an admin limited to tenants cannot see it all).\n\n"
	  "The export carries its own public key, and whoever could rewrite the\n"
	  "file could replace that key too: pin it. Take the fingerprint from\n"
	  "'kbctl audit key' (or a trusted earlier export) and pass it as\n"
	  "--key-fingerprint: a key with another fingerprint is refused (exit 1).\n"
	  "Without it the output says the key was not pinned. After 'audit\n"
	  "rotate-key' the export carries every key the log has used; each new\n"
	  "key is accepted only after a checkpoint of the one before covers its\n"
	  "rotation event, so pinning any of them vouches for all.\n\n"
	  "A log with no checkpoint proves nothing (its checkpoints may have\n"
	  "been removed): it fails unless --allow-unsigned. A checkpoint placed\n"
	  "before events it covers fails too.\n"
	  "--json prints {\"verified\", \"events\", \"first_seq\", \"last_seq\",\n"
	  "\"checkpoints\", \"signed_through\", \"not_covered\", \"fingerprint\",\n"
	  "\"key_id\", \"failed_seq\", \"failed_line\", \"reason\", \"source\"}.",
	  { { "--online", NULL, "verify the broker's log through the API, not a file" },
	    { "--key-fingerprint", "HEX", "the audit key's fingerprint must be this (from 'audit key')" },
	    { "--allow-unsigned", NULL, "accept a log with no checkpoint (only the hash chain is checked)" } },
	  kbctl_cmd_audit_verify, KBCTL_LOCAL_ONLINE },
	{ "audit", "key", "", 0, 0,
	  "Show the audit signing key (public half)",
	  "The key that signs the checkpoints lives in the broker's token and\n"
	  "never leaves it. Prints its key_id, algorithm, fingerprint (hex SHA-256\n"
	  "of its SubjectPublicKeyInfo; kbctl checks it against the key) and the\n"
	  "public key in PEM. Keep the fingerprint somewhere safe and pass it to\n"
	  "'kbctl audit verify --key-fingerprint'. --json prints {\"key_id\",\n"
	  "\"algorithm\", \"fingerprint\", \"public_key_pem\"}.",
	  { { NULL } }, kbctl_cmd_audit_key },
	{ "audit", "keys", "", 0, 0,
	  "List every audit signing key the log has used",
	  "Oldest first: the retired keys (their private halves destroyed,\n"
	  "their public halves kept so old checkpoints still verify) and the one\n"
	  "in force ('active'). --json prints {\"keys\": [{\"key_id\", \"state\",\n"
	  "\"algorithm\", \"fingerprint\", \"create_time_us\", \"public_key_pem\"}]}.",
	  { { NULL } }, kbctl_cmd_audit_keys },
	{ "audit", "rotate-key", "", 0, 0,
	  "Rotate the audit signing key (platform-wide admins)",
	  "Makes a new signing key in the token. The log records the rotation\n"
	  "(an audit.key_rotated event naming both fingerprints), the old key\n"
	  "signs a checkpoint covering it, then the new key signs every later\n"
	  "checkpoint and the old key's private half is destroyed. Prints the new\n"
	  "key's id and fingerprint: pin it beside the old one. A crash in the\n"
	  "middle is finished by the next start.",
	  { { NULL } }, kbctl_cmd_audit_rotate_key },
	{ "backup", "create", "", 0, 0,
	  "Back up the database and the audit log (platform-wide admins)",
	  "An online, consistent snapshot (SQLite's online backup, while the\n"
	  "broker serves) of the database and of the audit log, written to --out\n"
	  "(mode 0600, through a temporary file renamed at the end: a failed or\n"
	  "interrupted backup leaves no FILE; an existing FILE is refused unless\n"
	  "--force). The file:\n"
	  "  line 1: keybroker-backup 1\n"
	  "  line 2: the manifest, JSON: token {label, serial, manufacturer,\n"
	  "          model}, schema_version, audit_head {seq, hash,\n"
	  "          checkpoint_seq}, keys [{id, purpose, tenant, state,\n"
	  "          fingerprint, label, in_token, environments, tenants, ...}],\n"
	  "          sections [{name, bytes, sha256}]\n"
	  "  then the sections' bytes (the database, then the audit database)\n"
	  "  last:   sha256 HEX (of every byte before it; kbctl checks it).\n"
	  "No DEK or key material is in it in plaintext: DEKs are sealed, KEKs\n"
	  "wrapped, and the keys themselves stay in the token, which must be\n"
	  "backed up on its own (README, Backup and recovery). Restore with\n"
	  "'keybrokerd --config CONF --restore FILE', the broker stopped. --json\n"
	  "prints {\"file\", \"bytes\", \"sha256\", \"audit_seq\", \"keys\"}.",
	  { { "--out", "FILE", "where to write the backup (mode 0600)", KBCTL_REQUIRED },
	    { "--force", NULL, "replace FILE if it exists" } },
	  kbctl_cmd_backup_create },
	{ NULL, "doctor", "", 0, 0,
	  "Check the broker's health: token, keys, certificates, clock, disk, jobs",
	  "Asks the running broker (RunDiagnostics, platform-wide admins) to\n"
	  "check, without changing anything: its token (logged in, the\n"
	  "mechanisms it uses), every key its database refers to (in the token,\n"
	  "with the recorded fingerprint; a missing one named with the\n"
	  "environments and tenants depending on it), the expiry of tls_cert and\n"
	  "its chain, of client_ca and of client_crl's nextUpdate (warn 30 days\n"
	  "ahead), policy time's mark against the wall clock and a clock jump\n"
	  "waiting for 'kbctl clock confirm', free disk for the database and the\n"
	  "audit log (doctor_disk_warn_mb, doctor_disk_fail_mb), jobs running or\n"
	  "failed, and what is locked, pending deletion or deleted. Each finding:\n"
	  "severity (OK, WARN, FAIL), what was checked, what was found, and what\n"
	  "to do (after ->). 'keybrokerd --doctor --config FILE' runs the same\n"
	  "checks with the broker stopped. --json prints {\"status\", \"summary\",\n"
	  "\"findings\": [{\"severity\", \"check\", \"subject\", \"found\",\n"
	  "\"remedy\"}], ...}.\n"
	  "Exit status: 0 all ok, 4 warnings but no failure, 5 at least one\n"
	  "failure; 1 the doctor could not run (no broker, refused), 2 usage.",
	  { { NULL } }, kbctl_cmd_doctor },

	/* Deletion with a way back (issue 14). */
	{ "envs", "delete", "TENANT ENV", 2, 2,
	  "Delete an environment, with a way back until it is final (destructive)",
	  "The environment (enabled or locked) and its backups become pending\n"
	  "deletion for the broker's deletion_window_days (default 7): it serves no\n"
	  "data key, and backup, restore (of its backups too), copy, apply-key,\n"
	  "revert-key, reset and unlock are refused, naming the time it becomes\n"
	  "final. 'kbctl envs undelete' cancels it until then. When the window\n"
	  "ends the broker destroys its data key versions and its backups' for\n"
	  "good. The name stays taken, while pending and after. With a quorum in\n"
	  "force this makes an approval request instead (kbctl approvals).\n\n"
	  CONFIRM_TEXT("the environment name") "\n\n"
	  "Prints the environment: state pending_deletion, delete_final_time.",
	  { YES_FLAG }, kbctl_cmd_envs_delete },
	{ "envs", "undelete", "TENANT ENV", 2, 2,
	  "Cancel an environment's pending deletion",
	  "Within the deletion window only: the environment is as it was before\n"
	  "(enabled, or locked if it was locked or its tenant was locked\n"
	  "meanwhile) and serves the same data key. Prints the environment.",
	  { { NULL } }, kbctl_cmd_envs_undelete },
	{ "keys", "delete", "TENANT KEY", 2, 2,
	  "Delete a tenant key that protects nothing (destructive)",
	  "Only an available key (not active) that protects nothing: no data key,\n"
	  "KEK or backup depends on it, counted from the database; otherwise it is\n"
	  "refused with the counts. The key becomes pending_deletion for the\n"
	  "broker's deletion_window_days (it cannot be activated meanwhile), then\n"
	  "its token object is destroyed. 'kbctl keys undelete' cancels it until\n"
	  "then. With a quorum in force this makes an approval request instead.\n\n"
	  CONFIRM_TEXT("the key id") "\n\n"
	  "Prints the key: state pending_deletion, delete_final_time.",
	  { YES_FLAG }, kbctl_cmd_keys_delete },
	{ "keys", "undelete", "TENANT KEY", 2, 2,
	  "Cancel a tenant key's pending deletion",
	  "Within the deletion window only: the key is available again. Prints\n"
	  "the key.",
	  { { NULL } }, kbctl_cmd_keys_undelete },

	/* Key census and retirement, DEK rotation (issue 14). */
	{ "keys", "retire", "[TENANT] KEY", 1, 2,
	  "Move what still depends on a key elsewhere, then retire it",
	  "A background job re-seals every data key version the key still seals\n"
	  "(a tenant key: through its KEKs) under the tenant's active key (a\n"
	  "platform key: under the current platform key), while data keys keep\n"
	  "being served; then the key is 'retired' and cannot be activated again\n"
	  "(a KEK or platform key is destroyed). Refused, naming the count, while a\n"
	  "locked environment depends on it, and for the active key, the current\n"
	  "KEK or the current platform key. 'keys show' tells what depends on it.\n\n"
	  "Prints the job; --wait follows it as 'keys activate --wait' does.",
	  { { "--wait", NULL, "wait for the re-seal job to finish" } },
	  kbctl_cmd_keys_retire },
	{ "envs", "rotate-dek", "TENANT ENV", 2, 2,
	  "Give an environment a new data key version",
	  "The new version is what 'datakey get' (GetDataKey) returns from now on;\n"
	  "older versions stay readable by number (--version N) for the data still\n"
	  "encrypted under them, until 'envs retire-dek' destroys them. Prints the\n"
	  "versions: current_version, min_version, versions kept.",
	  { { NULL } }, kbctl_cmd_envs_rotate_dek },
	{ "envs", "retire-dek", "TENANT ENV", 2, 2,
	  "Destroy an environment's data key versions below N",
	  "Once the service says its data no longer needs them (Vault's\n"
	  "min_decryption_version): every version below N is destroyed, and\n"
	  "GetDataKey for one is refused from then on (FAILED_PRECONDITION: ...\n"
	  "was retired). Never the current version: N above it is refused. Backups\n"
	  "of those versions refuse it (naming how many) unless --with-backups,\n"
	  "which destroys them too.\n\n"
	  CONFIRM_TEXT("the environment name") "\n\n"
	  "Prints the versions kept.",
	  { { "--below", "N", "destroy the versions below N", KBCTL_REQUIRED },
	    { "--with-backups", NULL, "also destroy the backups of those versions" },
	    YES_FLAG },
	  kbctl_cmd_envs_retire_dek },
};

const struct kbctl_group kbctl_groups[] = {
	{ "tenants", "Create, list, show, lock and unlock tenants" },
	{ "keys", "A tenant's keys: generate, upload, list, show, activate, retire" },
	{ "jobs", "Background jobs (activation, rotation and upgrade re-seals)" },
	{ "platform", "The broker's own keys: rotate the platform key" },
	{ "clock", "The broker's policy time; confirm a forward clock jump" },
	{ "quorum", "M-of-N approval policies: set, show" },
	{ "approvals", "Approval requests: list, show, approve, deny, watch" },
	{ "byok", "Bring your own key: the key-exchange key, offline wrapping" },
	{ "envs", "Environments: create, encrypt, back up, restore, copy, reset" },
	{ "datakey", "Fetch an environment's data key" },
	{ "audit", "The audit log: list, tail -f, export, verify, keys" },
	{ "backup", "Disaster recovery: back up the database and the audit log" },
};
/* clang-format on */

const size_t kbctl_ncmds = sizeof(kbctl_cmds) / sizeof(kbctl_cmds[0]);
const size_t kbctl_ngroups = sizeof(kbctl_groups) / sizeof(kbctl_groups[0]);
