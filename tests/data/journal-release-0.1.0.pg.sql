--
-- PostgreSQL database dump
--

\restrict EetvHGx674CD4nGOvyakhUAEXGbxZ7qGSBI0ZXg40PMr6bin9PetipD8dL2YEOb

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: audit; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit (
    id bigint NOT NULL,
    at double precision NOT NULL,
    who text NOT NULL,
    via text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    result text NOT NULL
);


--
-- Name: audit_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: audit_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.audit_id_seq OWNED BY public.audit.id;


--
-- Name: destinations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.destinations (
    name text NOT NULL,
    checked double precision NOT NULL,
    ok integer NOT NULL,
    message text NOT NULL,
    latency_ms double precision
);


--
-- Name: history; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.history (
    id bigint NOT NULL,
    job_id bigint NOT NULL,
    at double precision NOT NULL,
    from_state text,
    to_state text NOT NULL,
    attempt integer NOT NULL,
    owner text,
    detail text
);


--
-- Name: history_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.history_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: history_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.history_id_seq OWNED BY public.history.id;


--
-- Name: instance_timeouts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.instance_timeouts (
    job_id bigint NOT NULL,
    sop_instance_uid text NOT NULL,
    count integer NOT NULL
);


--
-- Name: instances; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.instances (
    job_id bigint NOT NULL,
    sop_instance_uid text NOT NULL,
    status integer,
    outcome text NOT NULL
);


--
-- Name: jobs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.jobs (
    id bigint NOT NULL,
    source text NOT NULL,
    sidecar text,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    profile text NOT NULL,
    destination text NOT NULL,
    after text DEFAULT 'move'::text NOT NULL,
    state text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt double precision DEFAULT 0 NOT NULL,
    last_error text,
    error_class text,
    alert integer DEFAULT 0 NOT NULL,
    series_uid text,
    study_uid text,
    instances integer,
    delivered integer DEFAULT 0 NOT NULL,
    quarantine_path text,
    created double precision NOT NULL,
    updated double precision NOT NULL,
    key text,
    owner text,
    lease_until double precision DEFAULT 0 NOT NULL,
    memory bigint DEFAULT 0 NOT NULL
);


--
-- Name: jobs_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: jobs_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.jobs_id_seq OWNED BY public.jobs.id;


--
-- Name: nodes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.nodes (
    owner text NOT NULL,
    pid integer NOT NULL,
    host text NOT NULL,
    version text NOT NULL,
    started double precision NOT NULL,
    heartbeat double precision NOT NULL,
    stopped double precision
);


--
-- Name: paused; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.paused (
    name text NOT NULL,
    at double precision NOT NULL,
    who text NOT NULL
);


--
-- Name: schema_version; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_version (
    version integer NOT NULL
);


--
-- Name: studies; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.studies (
    study_uid text NOT NULL,
    study_values text NOT NULL,
    updated double precision NOT NULL
);


--
-- Name: study_series; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.study_series (
    study_uid text NOT NULL,
    series_uid text NOT NULL,
    series_number integer
);


--
-- Name: audit id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit ALTER COLUMN id SET DEFAULT nextval('public.audit_id_seq'::regclass);


--
-- Name: history id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.history ALTER COLUMN id SET DEFAULT nextval('public.history_id_seq'::regclass);


--
-- Name: jobs id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs ALTER COLUMN id SET DEFAULT nextval('public.jobs_id_seq'::regclass);


--
-- Data for Name: audit; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.audit (id, at, who, via, action, target, result) FROM stdin;
1	1796513641.7897682	alice	cli	pause	research	paused
\.


--
-- Data for Name: destinations; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.destinations (name, checked, ok, message, latency_ms) FROM stdin;
pacs	1796513641.7904308	1	2.0 ms	2
\.


--
-- Data for Name: history; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.history (id, job_id, at, from_state, to_state, attempt, owner, detail) FROM stdin;
1	1	1796513641.7727003	\N	queued	0	\N	\N
2	2	1796513641.7750688	\N	queued	0	\N	\N
3	3	1796513641.7765534	\N	queued	0	\N	\N
4	4	1796513641.7780144	\N	queued	0	\N	\N
5	1	1796513641.780035	queued	converting	1	host:1	\N
6	1	1796513641.7812986	converting	sending	1	host:1	\N
7	1	1796513641.7839143	sending	done	1	host:1	\N
8	2	1796513641.785309	queued	converting	1	host:1	\N
9	2	1796513641.7865257	converting	retry-wait	1	host:1	association refused
10	3	1796513641.7877746	queued	converting	1	host:1	\N
11	3	1796513641.7887743	converting	quarantined	1	host:1	not a NIfTI file
\.


--
-- Data for Name: instance_timeouts; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.instance_timeouts (job_id, sop_instance_uid, count) FROM stdin;
\.


--
-- Data for Name: instances; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.instances (job_id, sop_instance_uid, status, outcome) FROM stdin;
1	1.2.3.1	0	success
1	1.2.3.2	45056	warning
\.


--
-- Data for Name: jobs; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.jobs (id, source, sidecar, sha256, size, profile, destination, after, state, attempts, next_attempt, last_error, error_class, alert, series_uid, study_uid, instances, delivered, quarantine_path, created, updated, key, owner, lease_until, memory) FROM stdin;
4	/in/bad.nii	\N	dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd	10	bids-mr	pacs	move	queued	0	0	\N	\N	0	\N	\N	\N	0	\N	1796513641.7773225	1796513641.7773225	kd	\N	0	0
1	/in/sub-01_T1w.nii.gz	\N	aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa	1000	bids-mr	pacs	move	done	1	0	\N	\N	0	1.2.3	1.2	2	2	\N	1796513641.770603	1796513641.7832096	ka	host:1	0	10
2	/in/sub-02_T1w.nii.gz	/in/sub-02_T1w.json	bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb	2000	bids-mr	pacs	move	retry-wait	1	1796517241.7858582	association refused	transient	1	\N	\N	\N	0	\N	1796513641.7742217	1796513641.7858694	kb	host:1	0	0
3	/in/sub-03_bold.nii.gz	\N	cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc	3000	bids-mr	research	move	quarantined	1	0	not a NIfTI file	\N	0	\N	\N	\N	0	/var/q/sub-03_bold.nii.gz	1796513641.7757976	1796513641.7882435	kc	host:1	0	0
\.


--
-- Data for Name: nodes; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.nodes (owner, pid, host, version, started, heartbeat, stopped) FROM stdin;
host:1	1	host	0.1.0	1796513641.791036	1796513641.791036	1796513641.7917264
\.


--
-- Data for Name: paused; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.paused (name, at, who) FROM stdin;
research	1796513641.7892787	alice
\.


--
-- Data for Name: schema_version; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.schema_version (version) FROM stdin;
1
\.


--
-- Data for Name: studies; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.studies (study_uid, study_values, updated) FROM stdin;
1.2	{"identity_rank": 4, "values": {}, "weak": []}	1796513641.7925103
\.


--
-- Data for Name: study_series; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.study_series (study_uid, series_uid, series_number) FROM stdin;
1.2	1.2.3	3106
\.


--
-- Name: audit_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.audit_id_seq', 1, true);


--
-- Name: history_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.history_id_seq', 11, true);


--
-- Name: jobs_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.jobs_id_seq', 4, true);


--
-- Name: audit audit_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);


--
-- Name: destinations destinations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.destinations
    ADD CONSTRAINT destinations_pkey PRIMARY KEY (name);


--
-- Name: history history_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.history
    ADD CONSTRAINT history_pkey PRIMARY KEY (id);


--
-- Name: instance_timeouts instance_timeouts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.instance_timeouts
    ADD CONSTRAINT instance_timeouts_pkey PRIMARY KEY (job_id, sop_instance_uid);


--
-- Name: instances instances_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.instances
    ADD CONSTRAINT instances_pkey PRIMARY KEY (job_id, sop_instance_uid);


--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);


--
-- Name: nodes nodes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.nodes
    ADD CONSTRAINT nodes_pkey PRIMARY KEY (owner);


--
-- Name: paused paused_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.paused
    ADD CONSTRAINT paused_pkey PRIMARY KEY (name);


--
-- Name: studies studies_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.studies
    ADD CONSTRAINT studies_pkey PRIMARY KEY (study_uid);


--
-- Name: study_series study_series_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.study_series
    ADD CONSTRAINT study_series_pkey PRIMARY KEY (study_uid, series_uid);


--
-- Name: history_done; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX history_done ON public.history USING btree (to_state, at);


--
-- Name: history_job; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX history_job ON public.history USING btree (job_id, at);


--
-- Name: jobs_identity; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX jobs_identity ON public.jobs USING btree (sha256, destination, profile);


--
-- Name: jobs_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX jobs_key ON public.jobs USING btree (key) WHERE ((key IS NOT NULL) AND (state <> ALL (ARRAY['failed'::text, 'cancelled'::text])));


--
-- Name: jobs_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX jobs_state ON public.jobs USING btree (state, next_attempt);


--
-- Name: jobs_updated; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX jobs_updated ON public.jobs USING btree (updated);


--
-- PostgreSQL database dump complete
--

\unrestrict EetvHGx674CD4nGOvyakhUAEXGbxZ7qGSBI0ZXg40PMr6bin9PetipD8dL2YEOb

