'use strict';
// A small Express app of checkbox.io's shape (server-side/site of the real one): it listens on
// APP_PORT, reaches MongoDB through MONGO_IP / MONGO_PORT / MONGO_USER / MONGO_PASSWORD (the
// user lives in `admin`, the data in `site`, as the real app's db.js has it), reads the mail
// settings MAIL_USER / MAIL_PASSWORD / MAIL_SMTP (unused here), and reads one feature flag from
// the local mirror of the flags store (FLAGS_URL, redis://:PASSWORD@127.0.0.1:PORT).
//
//   GET /api/health    200 {"status":"ok",...}: no database
//   GET /api/version   200 {"version":...}: no database
//   GET /api/banner    the banner; behind the flag BANNER_FLAG (default `new-banner`)
//   GET /api/studies   the studies from MongoDB; 503 with a reason when MongoDB does not answer
//
// No setting's value that is a secret (MONGO_PASSWORD, MAIL_PASSWORD, the password in
// FLAGS_URL) is ever logged or answered.

const express = require('express');
const { MongoClient } = require('mongodb');
const { Flags } = require('./flags');
const pkg = require('./package.json');

function fatal(msg) {
  console.error(`checkbox.io: ${msg}`);
  process.exit(2);
}

const port = Number(process.env.APP_PORT);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  fatal(`APP_PORT must be a port number (got ${JSON.stringify(process.env.APP_PORT || '')})`);
}
const version = process.env.APP_VERSION || pkg.version;
const bannerFlag = process.env.BANNER_FLAG || 'new-banner';
if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(bannerFlag)) fatal('BANNER_FLAG must be a flag name [A-Za-z0-9_.:-]');

let flags;
try {
  flags = new Flags(process.env.FLAGS_URL || '');
} catch (e) {
  fatal(`FLAGS_URL: ${e.message}`);
}

// Read, as the real app does, but not used by this example.
const mail = {
  user: process.env.MAIL_USER || '',
  smtp: process.env.MAIL_SMTP || '',
  configured: Boolean(process.env.MAIL_USER && process.env.MAIL_PASSWORD && process.env.MAIL_SMTP),
};

const mongo = (() => {
  const ip = process.env.MONGO_IP;
  if (!ip) return null;
  const mport = Number(process.env.MONGO_PORT || 27017);
  if (!Number.isInteger(mport) || mport < 1 || mport > 65535) fatal('MONGO_PORT must be a port number');
  const user = process.env.MONGO_USER || '';
  const password = process.env.MONGO_PASSWORD || '';
  const host = ip.includes(':') ? `[${ip}]` : ip;
  const auth = user ? `${encodeURIComponent(user)}:${encodeURIComponent(password)}@` : '';
  const url = `mongodb://${auth}${host}:${mport}/site?authSource=admin`;
  return {
    where: `${host}:${mport}`,
    client: new MongoClient(url, {
      serverSelectionTimeoutMS: 2000,
      connectTimeoutMS: 2000,
      maxPoolSize: 10,
    }),
  };
})();

const app = express();
app.disable('x-powered-by');
app.use(express.json({ limit: '16kb' }));
app.use((req, res, next) => {
  res.set('Cache-Control', 'no-store');
  next();
});

app.get('/api/health', (req, res) => {
  res.json({ status: 'ok', version });
});

app.get('/api/version', (req, res) => {
  res.json({
    name: pkg.name,
    version,
    release: process.env.PIPELINE_RELEASE || null,
    instance: process.env.PIPELINE_INSTANCE || null,
    node: process.version,
    mail: mail.configured ? 'configured' : 'not configured',
  });
});

app.get('/api/banner', async (req, res) => {
  const f = await flags.get(bannerFlag, false);
  res.json({
    flag: bannerFlag,
    on: f.on,
    source: f.source,
    banner: f.on
      ? 'New: design your study with the survey builder.'
      : 'Welcome to checkbox.io.',
  });
});

app.get('/api/studies', async (req, res) => {
  if (!mongo) {
    res.status(503).json({ error: 'MongoDB is not configured: set MONGO_IP, MONGO_PORT, MONGO_USER and MONGO_PASSWORD' });
    return;
  }
  try {
    const studies = await mongo.client
      .db('site')
      .collection('studies')
      .find({}, { projection: { _id: 0, name: 1, status: 1, studyKind: 1 } })
      .limit(100)
      .toArray();
    res.json(studies);
  } catch (e) {
    console.error(`api/studies: MongoDB at ${mongo.where}: ${e.name}`);
    res.status(503).json({ error: `MongoDB at ${mongo.where} does not answer (${e.name}); try again later` });
  }
});

app.use('/api', (req, res) => {
  res.status(404).json({ error: `no route ${req.method} ${req.path}` });
});

// A body that is not JSON, or any other error: a JSON answer, no stack trace.
app.use((err, req, res, next) => { // eslint-disable-line no-unused-vars
  const status = err.status && err.status >= 400 && err.status < 500 ? err.status : 500;
  if (status === 500) console.error(`${req.method} ${req.path}: ${err.name}`);
  res.status(status).json({ error: status === 500 ? 'internal error' : err.message });
});

const server = app.listen(port, process.env.APP_HOST || undefined, () => {
  console.log(`checkbox.io ${version} listening on port ${port}; flags: ${flags.describe()}; MongoDB: ${mongo ? mongo.where : 'not configured'}`);
});
server.on('error', (e) => fatal(`cannot listen on port ${port}: ${e.code || e.message}`));

function stop() {
  server.close(() => process.exit(0));
  flags.close();
  if (mongo) mongo.client.close().catch(() => {});
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
