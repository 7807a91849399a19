-- gotrue.py database schema, applied by migrate.py (never by the server itself).
--
-- Each section starts with a line `-- migration: VERSION [VERSION ...] description` and is
-- applied once; its versions are recorded in schema_migration, the table upstream GoTrue's
-- migrator uses, so a database made by upstream's `gotrue migrate` is recognised and only our
-- additions are applied to it. `{ns}` stands for DB_NAMESPACE plus `_`.
--
-- The SQL runs on MySQL 5.7/8, MariaDB 10.x and SQLite: MySQL-only table options sit in
-- /*! ... */ comments, which MySQL and MariaDB execute and SQLite ignores. migrate.py makes
-- one translation for SQLite: an AUTO_INCREMENT bigint becomes an INTEGER row id. A line
-- `-- only: sqlite` right under a section's header limits its statements to that engine.

-- migration: 20171026211738 20171026211808 20171026211834 20180103212743 20180108183307 20180119214651 20180125194653 upstream GoTrue's tables in their final shape
CREATE TABLE {ns}users (
  instance_id varchar(255) DEFAULT NULL,
  id varchar(255) NOT NULL,
  aud varchar(255) DEFAULT NULL,
  role varchar(255) DEFAULT NULL,
  email varchar(255) DEFAULT NULL,
  encrypted_password varchar(255) DEFAULT NULL,
  confirmed_at timestamp NULL DEFAULT NULL,
  invited_at timestamp NULL DEFAULT NULL,
  confirmation_token varchar(255) DEFAULT NULL,
  confirmation_sent_at timestamp NULL DEFAULT NULL,
  recovery_token varchar(255) DEFAULT NULL,
  recovery_sent_at timestamp NULL DEFAULT NULL,
  email_change_token varchar(255) DEFAULT NULL,
  email_change varchar(255) DEFAULT NULL,
  email_change_sent_at timestamp NULL DEFAULT NULL,
  last_sign_in_at timestamp NULL DEFAULT NULL,
  raw_app_meta_data JSON NULL DEFAULT NULL,
  raw_user_meta_data JSON NULL DEFAULT NULL,
  is_super_admin tinyint(1) DEFAULT NULL,
  created_at timestamp NULL DEFAULT NULL,
  updated_at timestamp NULL DEFAULT NULL,
  PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci */;
CREATE INDEX {ns}users_instance_id_idx ON {ns}users (instance_id);
CREATE INDEX {ns}users_instance_id_email_idx ON {ns}users (instance_id, email);

CREATE TABLE {ns}instances (
  id varchar(255) NOT NULL,
  uuid varchar(255) DEFAULT NULL,
  raw_base_config longtext,
  created_at timestamp NULL DEFAULT NULL,
  updated_at timestamp NULL DEFAULT NULL,
  PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8 */;

CREATE TABLE {ns}refresh_tokens (
  instance_id varchar(255) DEFAULT NULL,
  id bigint NOT NULL AUTO_INCREMENT,
  token varchar(255) DEFAULT NULL,
  user_id varchar(255) DEFAULT NULL,
  revoked tinyint(1) DEFAULT NULL,
  created_at timestamp NULL DEFAULT NULL,
  updated_at timestamp NULL DEFAULT NULL,
  PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8 */;
CREATE INDEX {ns}refresh_tokens_instance_id_idx ON {ns}refresh_tokens (instance_id);
CREATE INDEX {ns}refresh_tokens_instance_id_user_id_idx ON {ns}refresh_tokens (instance_id, user_id);
CREATE INDEX {ns}refresh_tokens_token_idx ON {ns}refresh_tokens (token);

CREATE TABLE {ns}audit_log_entries (
  instance_id varchar(255) DEFAULT NULL,
  id varchar(255) NOT NULL,
  payload JSON NULL DEFAULT NULL,
  created_at timestamp NULL DEFAULT NULL,
  PRIMARY KEY (id)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8 */;
CREATE INDEX {ns}audit_logs_instance_id_idx ON {ns}audit_log_entries (instance_id);

-- migration: 20261123000001 gotrue.py: one account per email and audience, unique refresh tokens, lookup indexes, user counts
-- Additive only: upstream GoTrue still reads and writes these tables. migrate.py refuses to
-- run this step while duplicates exist, and lists them.
UPDATE {ns}users SET email = LOWER(email);
CREATE UNIQUE INDEX {ns}users_instance_aud_email_key ON {ns}users (instance_id, aud, email);
CREATE INDEX {ns}users_confirmation_token_idx ON {ns}users (confirmation_token);
CREATE INDEX {ns}users_recovery_token_idx ON {ns}users (recovery_token);
CREATE INDEX {ns}users_email_change_token_idx ON {ns}users (email_change_token);
CREATE INDEX {ns}users_instance_aud_created_idx ON {ns}users (instance_id, aud, created_at, id);
ALTER TABLE {ns}refresh_tokens ADD parent varchar(255) NULL DEFAULT NULL;
CREATE UNIQUE INDEX {ns}refresh_tokens_token_key ON {ns}refresh_tokens (token);
CREATE INDEX {ns}refresh_tokens_parent_idx ON {ns}refresh_tokens (parent);
CREATE TABLE {ns}user_counts (
  instance_id varchar(255) NOT NULL,
  aud varchar(255) NOT NULL,
  n bigint NOT NULL,
  counted_at timestamp NULL DEFAULT NULL,
  PRIMARY KEY (instance_id, aud)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci */;
CREATE INDEX {ns}audit_log_entries_instance_created_idx ON {ns}audit_log_entries (instance_id, created_at, id);

-- migration: 20261203000001 gotrue.py: limits and throttles kept in the database (shared by every process), one-time codes of external logins
-- rate_limits: one row per bucket (a SHA-256 of what it counts: a recipient and mail kind, an
-- account's failed logins, a client); `hits` counts, `blocked_until` is when the bucket next lets
-- a request through, `expires_at` when the row may be pruned.
CREATE TABLE {ns}rate_limits (
  bucket varchar(64) NOT NULL,
  hits bigint NOT NULL DEFAULT 0,
  blocked_until timestamp NULL DEFAULT NULL,
  expires_at timestamp NULL DEFAULT NULL,
  PRIMARY KEY (bucket)
) /*! ENGINE=InnoDB DEFAULT CHARSET=ascii */;
CREATE INDEX {ns}rate_limits_expires_idx ON {ns}rate_limits (expires_at);
-- one_time_tokens: an external login's browser nonce once consumed, and the PKCE authorization
-- codes waiting to be exchanged; only hashes are stored.
CREATE TABLE {ns}one_time_tokens (
  token_hash varchar(64) NOT NULL,
  kind varchar(32) NOT NULL,
  instance_id varchar(255) DEFAULT NULL,
  user_id varchar(255) DEFAULT NULL,
  data text,
  expires_at timestamp NULL DEFAULT NULL,
  PRIMARY KEY (token_hash)
) /*! ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci */;
CREATE INDEX {ns}one_time_tokens_expires_idx ON {ns}one_time_tokens (expires_at);
-- one instance per site UUID (upstream checks before inserting, so concurrent requests made two)
CREATE UNIQUE INDEX {ns}instances_uuid_key ON {ns}instances (uuid);

-- migration: 20261203000002 gotrue.py on SQLite: three indexes that others already cover dropped (fewer pages written per refresh)
-- only: sqlite
-- Each duplicates another index or is a prefix of one: refresh_tokens_token_idx of the unique
-- refresh_tokens_token_key, refresh_tokens_instance_id_idx of (instance_id, user_id), and
-- audit_logs_instance_id_idx of (instance_id, created_at, id). Every index is a page that each
-- refresh writes to SQLite's log; MySQL keeps upstream's schema as it is.
DROP INDEX IF EXISTS {ns}refresh_tokens_token_idx;
DROP INDEX IF EXISTS {ns}refresh_tokens_instance_id_idx;
DROP INDEX IF EXISTS {ns}audit_logs_instance_id_idx;
