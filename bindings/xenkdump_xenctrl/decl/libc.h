/* C library: a memory stream for libxentoollog's stdio logger, so that
 * libxenctrl's messages are captured rather than written to stderr. */

FILE *open_memstream(char **ptr, size_t *sizeloc);
int fflush(FILE *stream);
void rewind(FILE *stream);
int fclose(FILE *stream);
void free(void *ptr);
