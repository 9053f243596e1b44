/* duet tokenize — encode text to token ids (a JSON array on stdout) or
 * decode a comma-separated id list back to text, with a model directory's
 * tokenizer.json. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "model/tokenizer.h"

static void tokenize_usage(FILE *f)
{
    fprintf(f, "usage: duet tokenize --model DIR [options] TEXT...\n"
               "       duet tokenize --model DIR --decode IDS [--skip-special]\n"
               "\n"
               "Encode TEXT with the model's tokenizer.json and print the token ids as a JSON\n"
               "array, or decode a comma-separated list of ids and print the text.\n"
               "\n"
               "options:\n"
               "  -m, --model PATH    model directory holding tokenizer.json, or a tokenizer.json\n"
               "                      file (required)\n"
               "  -d, --decode IDS    decode IDS, e.g. 1,2,3 (spaces and a surrounding [ ] are\n"
               "                      accepted), instead of encoding\n"
               "  -s, --add-special   when encoding, add the special tokens the tokenizer's\n"
               "                      post_processor adds (e.g. BOS <s>); default: none, as HF\n"
               "                      encode(add_special_tokens=False)\n"
               "  -k, --skip-special  when decoding, leave out special tokens\n"
               "  -t, --tokens        when encoding, print a JSON array of [id, \"token\"] pairs\n"
               "                      instead of bare ids\n"
               "  -h, --help          show this help\n"
               "\n"
               "TEXT: several arguments are joined with single spaces; '-' reads stdin.\n"
               "Decoded text is written exactly (a newline is added only on a terminal).\n"
               "Special tokens written in TEXT (e.g. <|im_start|>) encode to their ids.\n"
               "\n"
               "exit status: 0 ok; 1 error (unreadable or bad tokenizer.json, id out of range,\n"
            "invalid UTF-8 text); 2 usage error (bad option, malformed --decode list)\n");
}

/* Parse "1,2, 3" or "[1,2,3]"; an entry that is not an integer is named. */
static int parse_ids(const char *s, int32_t **ids_out, size_t *n_out)
{
    size_t cap = 0, n = 0, entry = 0;
    int32_t *ids = NULL;
    const char *p = s;
    while (*p == ' ' || *p == '[')
        p++;
    while (*p && *p != ']') {
        const char *start = p;
        while (*p && *p != ',' && *p != ']')
            p++;
        size_t len = (size_t)(p - start);
        while (len > 0 && start[len - 1] == ' ')
            len--;
        while (len > 0 && *start == ' ') {
            start++;
            len--;
        }
        char tmp[32];
        char *end = NULL;
        long long v = 0;
        bool ok = len > 0 && len < sizeof(tmp);
        if (ok) {
            memcpy(tmp, start, len);
            tmp[len] = '\0';
            errno = 0;
            v = strtoll(tmp, &end, 10);
            ok = errno == 0 && *end == '\0' && v >= 0 && v <= INT32_MAX;
        }
        if (!ok) {
            fprintf(stderr,
                    "duet tokenize: --decode: entry %zu ('%.*s') is not a token id "
                    "(a non-negative integer)\n",
                    entry + 1, (int)DUET_MIN(len, 40), start);
            duet_free(ids);
            return 2;
        }
        if (n == cap && duet_vec_reserve((void **)&ids, &cap, n + 1, sizeof(*ids)) != DUET_OK) {
            fprintf(stderr, "duet tokenize: out of memory\n");
            duet_free(ids);
            return 1;
        }
        ids[n++] = (int32_t)v;
        entry++;
        if (*p == ',')
            p++;
    }
    *ids_out = ids;
    *n_out = n;
    return 0;
}

static void print_json_string(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static int read_stdin(duet_buf_t *b)
{
    char chunk[65536];
    size_t r;
    while ((r = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
        if (duet_buf_append(b, chunk, r) != DUET_OK)
            return -1;
    return ferror(stdin) ? -1 : 0;
}

int duet_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"decode", required_argument, NULL, 'd'},
        {"add-special", no_argument, NULL, 's'},
        {"skip-special", no_argument, NULL, 'k'},
        {"tokens", no_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *decode = NULL;
    bool add_special = false, skip_special = false, show_tokens = false;
    int c, rc = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:d:skth", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'd': decode = optarg; break;
        case 's': add_special = true; break;
        case 'k': skip_special = true; break;
        case 't': show_tokens = true; break;
        case 'h': tokenize_usage(stdout); return 0;
        default: tokenize_usage(stderr); return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "duet tokenize: --model DIR is required\n\n");
        tokenize_usage(stderr);
        return 2;
    }
    if (decode && optind < argc) {
        fprintf(stderr, "duet tokenize: give either --decode IDS or TEXT, not both\n");
        return 2;
    }
    if (!decode && optind >= argc) {
        fprintf(stderr, "duet tokenize: no TEXT to encode (use '-' for stdin)\n\n");
        tokenize_usage(stderr);
        return 2;
    }

    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL;
    duet_buf_t in = {0};
    duet_tokenizer_t *tok = NULL;
    if (decode && (rc = parse_ids(decode, &ids, &n)) != 0)
        return rc;
    rc = 1;
    if (duet_tokenizer_load(model, &tok) != DUET_OK) {
        fprintf(stderr, "duet tokenize: %s\n", duet_error());
        goto out_free;
    }
    if (decode) {
        size_t len;
        if (duet_tokenizer_decode(tok, ids, n, skip_special, &text, &len) != DUET_OK) {
            fprintf(stderr, "duet tokenize: %s\n", duet_error());
            goto out_free;
        }
        fwrite(text, 1, len, stdout);
        if (isatty(STDOUT_FILENO))
            putchar('\n'); /* keep the prompt off the text; pipes get the text exactly */
        rc = 0;
        goto out_free;
    }
    for (int i = optind; i < argc; i++) {
        duet_status_t st = DUET_OK;
        if (i > optind)
            st = duet_buf_append(&in, " ", 1);
        if (st == DUET_OK && !strcmp(argv[i], "-") && read_stdin(&in) != 0) {
            fprintf(stderr, "duet tokenize: reading stdin: %s\n", strerror(errno));
            goto out_free;
        } else if (st == DUET_OK && strcmp(argv[i], "-") != 0) {
            st = duet_buf_append(&in, argv[i], strlen(argv[i]));
        }
        if (st != DUET_OK) {
            fprintf(stderr, "duet tokenize: out of memory\n");
            goto out_free;
        }
    }
    if (duet_tokenizer_encode(tok, (const char *)in.data, in.len, add_special, &ids, &n) !=
        DUET_OK) {
        fprintf(stderr, "duet tokenize: %s\n", duet_error());
        goto out_free;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            fputs(", ", stdout);
        if (show_tokens) {
            size_t tl = 0;
            const char *ts = duet_tokenizer_token_str(tok, ids[i], &tl);
            printf("[%" PRId32 ", ", ids[i]);
            print_json_string(ts ? ts : "", tl);
            putchar(']');
        } else {
            printf("%" PRId32, ids[i]);
        }
    }
    puts("]");
    rc = 0;
out_free:
    duet_free(ids);
    duet_free(text);
    duet_buf_cleanup(&in);
    duet_tokenizer_destroy(&tok);
    return rc;
}
