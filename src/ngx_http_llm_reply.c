/*
 * JSON replies and OpenAI-shaped errors, and a header/body filter pair that
 * replaces nginx's own HTML error pages (413 from client_max_body_size, 408,
 * 500, ...) with an OpenAI error JSON inside llm_pass locations, so clients
 * always get JSON they can parse.
 */
#include "ngx_http_llm_module.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;

/* Marks requests whose HTML error page is being replaced. */
typedef struct {
    ngx_buf_t  *json;
    unsigned    sent:1;
} ngx_http_llm_filter_ctx_t;

static ngx_int_t ngx_http_llm_filter_ctx_index;


ngx_int_t
ngx_http_llm_add_header(ngx_http_request_t *r, const char *name,
    const char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.len = ngx_strlen(value);
    h->value.data = ngx_pnalloc(r->pool, h->value.len);
    if (h->value.data == NULL) {
        return NGX_ERROR;
    }
    ngx_memcpy(h->value.data, value, h->value.len);
    return NGX_OK;
}


ngx_int_t
ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status,
    const char *body, size_t len)
{
    return ngx_http_llm_send_body(r, status, "application/json", body, len);
}


ngx_int_t
ngx_http_llm_send_body(ngx_http_request_t *r, ngx_uint_t status,
    const char *content_type, const char *body, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_type.data = (u_char *) content_type;
    r->headers_out.content_type.len = ngx_strlen(content_type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = len;
    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (len == 0) {
        return ngx_http_send_special(r, NGX_HTTP_LAST);
    }
    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }
    b->last = ngx_cpymem(b->pos, body, len);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;
    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_llm_send_error(ngx_http_request_t *r, const oai_error *e)
{
    char       *json;
    size_t      len = 0;
    ngx_int_t   rc;

    if (e->status == NGX_HTTP_TOO_MANY_REQUESTS
        || e->status == NGX_HTTP_SERVICE_UNAVAILABLE)
    {
        /* when to come back: the queue drains within seconds */
        if (ngx_http_llm_add_header(r, "Retry-After", "1") != NGX_OK) {
            return NGX_ERROR;
        }
    }
    if (e->status == NGX_HTTP_UNAUTHORIZED) {
        if (ngx_http_llm_add_header(r, "WWW-Authenticate", "Bearer") != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    json = oai_error_json(e, &len);
    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    rc = ngx_http_llm_send_json(r, e->status, json, len);
    free(json);
    return rc;
}


ngx_int_t
ngx_http_llm_error(ngx_http_request_t *r, ngx_uint_t status, const char *type,
    const char *code, const char *fmt, ...)
{
    va_list    ap;
    oai_error  e;

    oai_error_set(&e, (int) status, type, code, NULL, "%s", "");
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof(e.message), fmt, ap);
    va_end(ap);
    return ngx_http_llm_send_error(r, &e);
}


/* ---- nginx's own error pages as JSON ------------------------------------ */

static const char *
ngx_http_llm_status_message(ngx_uint_t status)
{
    switch (status) {
    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        return "request body too large (over client_max_body_size)";
    case NGX_HTTP_REQUEST_TIME_OUT:
        return "timed out reading the request";
    case NGX_HTTP_BAD_REQUEST:
        return "bad request";
    case NGX_HTTP_FORBIDDEN:
        return "forbidden";
    case NGX_HTTP_NOT_FOUND:
        return "not found";
    case NGX_HTTP_NOT_ALLOWED:
        return "method not allowed";
    case NGX_HTTP_LENGTH_REQUIRED:
        return "length required";
    case NGX_HTTP_SERVICE_UNAVAILABLE:
        return "service unavailable";
    case NGX_HTTP_GATEWAY_TIME_OUT:
        return "gateway timeout";
    default:
        return status >= 500 ? "internal server error" : "request error";
    }
}


static ngx_int_t
ngx_http_llm_header_filter(ngx_http_request_t *r)
{
    ngx_http_llm_loc_conf_t    *lcf;
    ngx_http_llm_filter_ctx_t  *fctx;
    oai_error                   e;
    char                       *json;
    size_t                      len = 0;
    ngx_uint_t                  status = r->headers_out.status;
    static ngx_str_t            html = ngx_string("text/html");

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    /*
     * Only nginx's generated pages: an error status with text/html in a
     * location that serves the API; our own replies are application/json.
     */
    if (lcf == NULL || lcf->model == NULL || status < NGX_HTTP_BAD_REQUEST
        || r != r->main
        || r->headers_out.content_type.len != html.len
        || ngx_strncasecmp(r->headers_out.content_type.data, html.data,
                           html.len) != 0)
    {
        return ngx_http_next_header_filter(r);
    }

    oai_error_set(&e, (int) status,
                  status == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                      ? "invalid_request_error"
                      : status >= 500 ? "internal_server_error"
                                      : "invalid_request_error",
                  status == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                      ? "request_too_large" : NULL,
                  NULL, "%s", ngx_http_llm_status_message(status));
    json = oai_error_json(&e, &len);
    if (json == NULL) {
        return ngx_http_next_header_filter(r);
    }

    fctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_filter_ctx_t));
    if (fctx == NULL) {
        free(json);
        return NGX_ERROR;
    }
    fctx->json = ngx_create_temp_buf(r->pool, len);
    if (fctx->json == NULL) {
        free(json);
        return NGX_ERROR;
    }
    fctx->json->last = ngx_cpymem(fctx->json->pos, json, len);
    fctx->json->last_buf = 1;
    free(json);

    r->ctx[ngx_http_llm_filter_ctx_index] = fctx;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;
    r->headers_out.content_length_n = len;
    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }
    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_llm_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_http_llm_filter_ctx_t  *fctx;
    ngx_chain_t                *cl, out;

    fctx = r->ctx[ngx_http_llm_filter_ctx_index];
    if (fctx == NULL || r != r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    /* swallow the HTML page, send the JSON once */
    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        if (cl->buf->in_file) {
            cl->buf->file_pos = cl->buf->file_last;
        }
    }
    if (fctx->sent) {
        return ngx_http_next_body_filter(r, NULL);
    }
    fctx->sent = 1;
    out.buf = fctx->json;
    out.next = NULL;
    return ngx_http_next_body_filter(r, &out);
}


ngx_int_t
ngx_http_llm_filter_init(ngx_conf_t *cf)
{
    /*
     * The module's ctx slot belongs to this filter alone: the generation
     * path keeps its state in its cleanup and slots, never in r->ctx.
     */
    ngx_http_llm_filter_ctx_index = ngx_http_llm_module.ctx_index;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_llm_header_filter;
    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_llm_body_filter;
    return NGX_OK;
}
