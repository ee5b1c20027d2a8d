/* libxentoollog (xentoollog.h): only what xenkdump needs to give libxenctrl
 * a logger, so that its messages reach our exceptions instead of stderr
 * (docs/xen-kexec-contract.md §2.6). */

typedef enum xentoollog_level {
    XTL_NONE,
    XTL_DEBUG,
    XTL_VERBOSE,
    XTL_DETAIL,
    XTL_PROGRESS,
    XTL_INFO,
    XTL_NOTICE,
    XTL_WARN,
    XTL_ERROR,
    XTL_CRITICAL,
    XTL_NUM_LEVELS
} xentoollog_level;

/* Opaque here: we never call through its vmessage/progress/destroy slots. */
typedef struct xentoollog_logger xentoollog_logger;
typedef struct xentoollog_logger_stdiostream xentoollog_logger_stdiostream;

#define XTL_STDIOSTREAM_SHOW_PID 1
#define XTL_STDIOSTREAM_SHOW_DATE 2
#define XTL_STDIOSTREAM_HIDE_PROGRESS 4

xentoollog_logger_stdiostream *xtl_createlogger_stdiostream(FILE *f, xentoollog_level min_level, unsigned flags);
void xtl_logger_destroy(xentoollog_logger *logger);
