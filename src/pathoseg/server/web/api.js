// The REST API (/api, schema at /docs) as the editor calls it: the login token on every
// request, and every failure as an Error carrying the server's one-line detail.
let token = "";

export function setToken(value) { token = value; }

export async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return res;
}
